"""`das-stream run` settings: one validated object built from a YAML file plus command-line flags.

Every key of :class:`RunConfig` can appear in a YAML file (``--config``); a flag given on the
command line overrides the file. Unknown keys and bad values raise
:class:`~sampler.errors.ConfigError` naming the key, the file and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sampler.errors import ConfigError


@dataclass(frozen=True)
class RunConfig:
    """Settings of one streaming run (see ``das-stream run --help`` for each flag).

    Attributes:
        sources: source specs (``video:PATH``, ``probe:DEV|URL``, ``zmq+sub://H:P``,
            ``zmq+pull://H:P``, ``synthetic:``); one stream each.
        model: model file from ``das-stream train`` (None: the bundled demo model).
        window: window length T; must equal the model's (None: take the model's).
        stride: distance between window starts (None: the window length, no overlap).
        speed, pacing, loop: replay options of ``video:`` (and pacing of ``synthetic:``).
        overload: queue policy for frames when the classifier lags: ``drop_oldest``, ``block``,
            or ``auto`` (block for un-paced replays, drop_oldest for everything live).
        frame_queue, window_queue, max_batch_windows: queue sizes and inference batching.
        device, engine, threads: where and how the classifier runs.
        mqtt, topic_prefix, qos, client_id, mqtt_buffer, tls_ca, tls_cert, tls_key,
            tls_insecure: the MQTT sink (None: no MQTT).
        jsonl: also write every message to this JSON-lines file.
        console: print predictions and stats to stdout.
        stats_interval: seconds between stats messages.
        duration: stop after this many seconds (None: run until the sources end or Ctrl-C).
        gap: seconds without a frame after which a stream's open window is classified, padded,
            and the next window marked ``gap_before`` (0: never).
        log_level: debug, info, warning or error.
    """

    sources: tuple[str, ...] = ("synthetic:",)
    model: str | None = None
    window: int | None = None
    stride: int | None = None
    speed: float = 1.0
    pacing: bool = True
    loop: bool = False
    overload: Literal["auto", "drop_oldest", "block"] = "auto"
    frame_queue: int = 256
    window_queue: int = 16
    max_batch_windows: int = 8
    device: str = "auto"
    engine: Literal["torch", "onnx"] = "torch"
    threads: int | None = None
    mqtt: str | None = None
    topic_prefix: str = "das"
    qos: Literal[0, 1, 2] = 1
    client_id: str | None = None
    mqtt_buffer: int = 10000
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False
    jsonl: str | None = None
    console: bool = True
    stats_interval: float = 5.0
    duration: float | None = None
    gap: float = 2.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    _origin: str = field(default="the command line", repr=False, compare=False)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(RunConfig)
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            value = _coerce(f.name, getattr(self, f.name), hints[f.name], self._origin)
            object.__setattr__(self, f.name, value)
        positive = ("frame_queue", "window_queue", "max_batch_windows", "mqtt_buffer", "window", "stride", "threads")
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value} (in {self._origin})")
        for name in ("speed", "stats_interval", "duration"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value} (in {self._origin})")
        if not math.isfinite(self.gap) or self.gap < 0:
            raise ConfigError(f"gap must be a number of seconds >= 0 (0 turns it off), got {self.gap} (in {self._origin})")
        if not self.sources:
            raise ConfigError(f"no source given (in {self._origin}); add --source SPEC, e.g. --source synthetic:")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
        """Build from an optional YAML file, then apply the non-None ``overrides`` (the flags)."""
        values: dict[str, Any] = {}
        origin = "the command line"
        if path is not None:
            values = read_yaml(path)
            origin = str(path)
            unknown = sorted(set(values) - set(cls.keys()))
            if unknown:
                raise ConfigError(
                    f"unknown key {unknown[0]!r} in {path}; valid keys: {', '.join(cls.keys())}"
                )
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = value
        return cls(**values, _origin=origin)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding one mapping, or ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; check the path (examples are in configs/)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def _coerce(name: str, value: Any, hint: Any, origin: str) -> Any:
    """Check ``value`` against the field's type (int/float/str/bool/Literal/optional/tuple)."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{name} must be {expected}, got {value!r} (in {origin})")

    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        args = typing.get_args(hint)
    origin_type = typing.get_origin(hint)
    if origin_type is Literal:
        if value not in args:
            raise bad("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin_type is tuple:
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise TypeError(f"unsupported config type {hint} for {name}")  # a programming error
