"""Human-readable lines for predictions and stats, and the ordered line writer other sinks share."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TextIO

from core.errors import SinkError
from sinks.messages import Prediction, Stats


def printable(text: object, limit: int = 120) -> str:
    """``text`` safe to print on a terminal, as one line: cut to ``limit`` characters, and every
    character that is not printable (ANSI escapes, BEL, CR, LF, other controls, bidi overrides)
    written as its escape (``\\x1b``, ``\\u202e``), so a sender can neither forge lines nor drive
    the terminal."""
    text = str(text)
    if len(text) > limit:
        text = f"{text[:limit]}...({len(text)} chars)"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _num(value: float | None, spec: str) -> str:
    """A figure as ``spec`` formats it, or "?" for a missing one (null in the payload)."""
    return "?" if value is None else format(value, spec)


def format_prediction(p: Prediction) -> str:
    """One line: stream, window, seq range, label, top probability, frames picked, latency, the
    segment (a DICOM file) when there is one, and the pause (or restart) before the window when
    there was one. Sender text is made :func:`printable`."""
    top = max((v for v in p.probs.values() if v is not None), default=math.nan)
    padded = f" (+{p.padded} padded)" if p.padded else ""
    segment = f" | {printable(p.segment, 80)}" if p.segment else ""
    after = ""
    if p.gap_before:
        gap_s = None if p.gap_ms is None else p.gap_ms / 1000.0
        after = f" | after {'a restart' if p.restarted else 'a pause'} of {_num(gap_s, '.1f')} s"
    return (
        f"{printable(p.stream, 60)} #{p.window} seq {p.first_seq}-{p.last_seq}{padded}: {printable(p.label, 60)}"
        f" {top:.2f} | picked {len(p.selected)}{_exit(p)} | {_num(p.latency_ms, '.1f')} ms{segment}{after}"
    )


def _exit(p: Prediction) -> str:
    """`` of 8 (confident)``: the k_max in force and why the engine stopped, when it says."""
    if not p.k_max:
        return ""
    return f" of {p.k_max}" + (f" ({p.exit})" if p.exit in ("confident", "budget") else "")


def format_stats(s: Stats) -> str:
    """One line with the counters, input rate, latency percentiles and compute saved, and the
    MQTT sink's delivery counters when the stats carry them (``extra.MqttSink``)."""
    p50, p95, p99 = (_num(s.latency_ms.get(k), ".1f") for k in ("p50", "p95", "p99"))
    final = " (final)" if s.final else ""
    return (
        f"{printable(s.stream, 60)} stats{final}: in {s.frames_in} forwarded {s.frames_forwarded}"
        f" skipped {s.frames_skipped} dropped {s.frames_dropped} bad {s.bad_messages}"
        + (f" resampled out {s.frames_resampled_out}" if s.frames_resampled_out else "")
        + f" windows {s.windows} | {_num(s.fps_in, '.1f')} fps | latency p50/p95/p99"
        f" {p50}/{p95}/{p99} ms | compute saved {_num(s.compute_saved, '.0%')}{_delivery(s)}"
    )


def _delivery(s: Stats) -> str:
    mqtt = s.extra.get("MqttSink") if isinstance(s.extra, dict) else None
    if not isinstance(mqtt, dict):
        return ""
    figures = {k: mqtt.get(k) for k in ("published", "buffered", "overflow", "reconnects")}
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in figures.values()):
        return ""
    return (
        f" | mqtt published {figures['published']} waiting {figures['buffered']}"
        f" lost {figures['overflow']} reconnects {figures['reconnects']}"
    )


class LineWriter:
    """Write whole lines to a text stream from one worker thread, in call order, flushing each.

    ``write`` hands the line to the worker and returns at once, so a slow terminal or disk never
    holds up the pipeline; only when ``max_pending`` lines are still waiting does it wait for the
    oldest (memory stays bounded). A failed write is raised as SinkError by the next ``write`` or
    by ``aclose``.

    Args:
        stream: where the lines go.
        name: what the stream is, for the error message (e.g. "JSONL file 'out.jsonl'").
        close: close ``stream`` in :meth:`aclose` (for files the writer owns).
        max_pending: lines that may wait for the worker before ``write`` waits too.
    """

    def __init__(self, stream: TextIO, *, name: str, close: bool = False, max_pending: int = 1000) -> None:
        self._stream = stream
        self._name = name
        self._close = close
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="das-lines")
        self._pending: collections.deque[concurrent.futures.Future] = collections.deque()
        self._max_pending = max_pending

    async def write(self, line: str) -> None:
        """Queue ``line`` (and a newline); raises SinkError when an earlier write failed."""
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()  # raises the SinkError of a failed write
        if len(self._pending) >= self._max_pending:
            await asyncio.wrap_future(self._pending.popleft())
        self._pending.append(self._executor.submit(self._write, line))

    async def aclose(self) -> None:
        """Finish pending writes (and close the stream if owned); raise the first failure."""
        try:
            while self._pending:
                await asyncio.wrap_future(self._pending.popleft())
        finally:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._finish)
            self._executor.shutdown(wait=False)

    def _write(self, line: str) -> None:
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError) as exc:
            raise SinkError(f"cannot write {self._name}: {exc}; check the disk or choose another output") from exc

    def _finish(self) -> None:
        if self._close:
            self._stream.close()
        else:
            self._stream.flush()


class ConsoleSink:
    """Print one readable line per prediction and per stats message.

    Args:
        stream: text stream to print to (default: ``sys.stdout`` at construction).
        show_stats: also print stats lines.
    """

    def __init__(self, stream: TextIO | None = None, *, show_stats: bool = True) -> None:
        self._writer = LineWriter(stream if stream is not None else sys.stdout, name="the console")
        self._show_stats = show_stats

    async def __aenter__(self) -> ConsoleSink:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._writer.aclose()

    async def publish_prediction(self, p: Prediction) -> None:
        await self._writer.write(format_prediction(p))

    async def publish_stats(self, s: Stats) -> None:
        if self._show_stats:
            await self._writer.write(format_stats(s))
