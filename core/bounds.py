"""Bounds on every number a user or a sender gives: one table, one check, one-line errors.

A value outside its bound is refused before anything runs on it: ``--max-batch-windows
99999999999999999999`` (a warm-up over every batch size), ``--threads`` of 20 digits (an
overflow inside torch), ``duration: .inf``, ``synthetic:?fps=1e309``, a DICOM Frame Time of
1e9 ms (0.001 frames/s) or 1e-9 ms (1e12 frames/s).

    check("max_batch_windows", 8)                      -> 8
    check("fps", 1e309, context=" (in synthetic:?fps=1e309)")  -> ConfigError, one line

The run and cluster configs check their fields here (:func:`check_fields`), the CLI's flags use
:func:`flag` as their argparse type, and sources check what they read (frame rates, playback
speed) with :func:`check` or :func:`within`. The limits are wide enough for any real use and
narrow enough that nothing downstream overflows, loops for ages or divides by almost zero.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

YEAR_S = 365 * 24 * 3600.0


@dataclass(frozen=True)
class Bound:
    """The allowed range of one kind of number.

    Args:
        lo, hi: the smallest and largest value allowed (inclusive; ``lo_open`` excludes ``lo``).
        integer: only integers (never bools).
        unit: what the number counts, for the message ("frames/s", "s", "windows", ...).
        lo_open: ``lo`` itself is not allowed (a rate or a speed > 0).
    """

    lo: float
    hi: float
    integer: bool = False
    unit: str = ""
    lo_open: bool = False

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is a number of the right kind within the bound (NaN never is)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        return above and value <= self.hi

    def describe(self) -> str:
        """``an integer from 1 to 1024 (windows)``, ``a number > 0 and at most 1000 (x real time)``."""
        unit = f" ({self.unit})" if self.unit else ""
        kind = "an integer" if self.integer else "a number"
        lo, hi = _number(self.lo), _number(self.hi)
        return f"{kind} > {lo} and at most {hi}{unit}" if self.lo_open else f"{kind} from {lo} to {hi}{unit}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# The table: one entry per kind of number, looked up by the setting's name.
_RATE = Bound(0.01, 100_000.0, unit="frames/s", lo_open=False)
_SECONDS = Bound(0.0, YEAR_S, unit="s", lo_open=True)
BOUNDS: dict[str, Bound] = {
    # frames and windows
    "fps": _RATE,
    "frame_rate": _RATE,
    "speed": Bound(0.0, 1000.0, unit="x real time", lo_open=True),
    "window": Bound(1, 4096, integer=True, unit="frames"),
    "stride": Bound(1, 4096, integer=True, unit="frames"),
    "frames": Bound(0, 10**12, integer=True, unit="frames"),
    "clip_frames": Bound(1, 4096, integer=True, unit="frames"),
    "clip_size": Bound(16, 4096, integer=True, unit="pixels"),
    # queues and batches
    "frame_queue": Bound(1, 1_000_000, integer=True, unit="frames"),
    "window_queue": Bound(1, 100_000, integer=True, unit="windows"),
    "publish_queue": Bound(1, 100_000, integer=True, unit="windows"),
    "max_batch_windows": Bound(1, 1024, integer=True, unit="windows"),
    "max_batch_frames": Bound(1, 1_000_000, integer=True, unit="frames"),
    "mqtt_buffer": Bound(1, 10_000_000, integer=True, unit="messages"),
    "replicas": Bound(1, 1024, integer=True),
    # a cluster's resources and failure handling (streamer.cluster)
    "replica_cpus": Bound(0.0, 1024.0, unit="CPUs"),
    "replica_gpus": Bound(0.0, 64.0, unit="GPUs"),
    "stream_cpus": Bound(0.0, 1024.0, unit="CPUs"),
    "batch_wait_ms": Bound(0.0, 60_000.0, unit="ms"),
    "stream_restarts": Bound(-1, 10**6, integer=True, unit="restarts, -1: always"),
    "request_retries": Bound(0, 10**6, integer=True, unit="retries"),
    "report_interval": Bound(0.0, 3600.0, unit="s"),
    "threads": Bound(1, 1024, integer=True, unit="threads"),
    # times
    "duration": _SECONDS,
    "stats_interval": _SECONDS,
    "request_timeout": _SECONDS,
    "connect_timeout": _SECONDS,
    "timeout": _SECONDS,
    "gap": Bound(0.0, YEAR_S, unit="s"),
    # live sources: reconnection and buffers
    "reconnect_initial": Bound(0.0, 3600.0, unit="s", lo_open=True),
    "reconnect_max": Bound(0.0, 3600.0, unit="s", lo_open=True),
    "open_attempts": Bound(1, 1_000_000, integer=True),
    "max_reconnects": Bound(1, 10**9, integer=True),
    "queue_size": Bound(1, 100_000, integer=True, unit="frames"),
    "rcvhwm": Bound(1, 100_000, integer=True, unit="messages"),
    "backlog": Bound(1, 100_000, integer=True, unit="messages"),
    "backlog_bytes": Bound(1, 2**40, integer=True, unit="bytes"),
    "max_seq_jump": Bound(1, 2**53, integer=True, unit="frames"),
    "max_clock_skew": _SECONDS,
    "budget": Bound(0.0, 1_000_000.0, unit="frames/s", lo_open=True),
}


def bound(key: str) -> Bound:
    """The bound of ``key`` (a programming error when there is none)."""
    try:
        return BOUNDS[key]
    except KeyError:
        raise KeyError(f"no bound for {key!r}; add it to core.bounds.BOUNDS") from None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:25]}...({len(text)} chars)"


def within(key: str, value: Any) -> bool:
    """Whether ``value`` is within ``key``'s bound (no error: for values a file or sender gives
    that are replaced by a default, e.g. a DICOM frame rate)."""
    return bound(key).holds(value)


def check(key: str, value: Any, *, context: str = "", error: Callable[[str], Exception] = ConfigError) -> Any:
    """``value`` when within ``key``'s bound (None passes: "not set"); else ``error`` (ConfigError
    by default, e.g. SourceError from a source) with ``"<key> must be <range>, got <value><context>"``."""
    if value is None:
        return None
    b = bound(key)
    if not b.holds(value):
        raise error(f"{key} must be {b.describe()}, got {_show(value)}{context}")
    return value


def check_fields(obj: Any, names: Iterable[str], *, context: str = "") -> None:
    """:func:`check` each named attribute of ``obj`` (a config's fields, by their own names)."""
    for name in names:
        check(name, getattr(obj, name), context=context)


def flag(key: str) -> Callable[[str], Any]:
    """An argparse ``type`` reading a flag's text as ``key``'s kind of number within its bound."""
    b = bound(key)

    def parse(text: str) -> Any:
        try:
            value: Any = int(text) if b.integer else float(text)
        except ValueError:
            value = math.nan
        if not b.holds(value):
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not {b.describe()}")
        return value

    parse.__name__ = key  # argparse names the type in its messages
    return parse
