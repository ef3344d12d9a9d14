"""What every source shares: the async context manager / async iterator shell, the thread that
runs the blocking reads, and wall-clock pacing for replayed streams.

A source subclass supplies the blocking parts, all run off the event loop:

- ``_open()``: connect / open a file (run with ``asyncio.to_thread`` on ``__aenter__``; raise
  SourceError for anything the user can fix, so a bad path fails at ``async with``).
- ``_produce(stop)``: a generator run in one dedicated thread; it yields items until the input
  ends or ``stop`` (a ``threading.Event``) is set, and must not block much longer than a read
  timeout without checking ``stop``.
- ``_close()``: release what ``_open`` acquired (also run in a thread).

and optionally ``_frames(items)``, loop-side work between the thread and the consumer (pacing).
By default the produced items are the ``Frame`` records themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.bounds import check
from core.errors import SourceError

from .frame import Frame, Segment
from .preview import Preview
from .preview import bind as bind_preview

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: str) -> str:
    """A stream id safe in MQTT topics and file names; SourceError otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SourceError(
            f"stream name {name!r} is not usable; use letters, digits, '.', '_' or '-' (no '/', '+', '#', spaces)"
        )
    return name


def derive_name(raw: str) -> str:
    """A default stream id from a file stem, device or port: unsafe characters become '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", raw).lstrip("._-")
    return cleaned or "stream"


class _End:
    """Marks the end of the produced items."""


class _Failure:
    """Carries an exception from the producer thread to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ThreadPump:
    """Runs a blocking producer in one daemon thread and hands its items to the event loop.

    Args:
        produce: ``produce(stop)`` returns an iterator of items; ``stop`` is set on ``stop()``.
        maxsize: items buffered between the thread and the consumer.
        drop_oldest: when the buffer is full, drop its oldest item (live inputs, which must
            keep reading) instead of making the producer wait (files, generators).
        on_drop: called on the loop for every dropped item.
        name: the thread name.
    """

    def __init__(
        self,
        produce: Callable[[threading.Event], Generator[Any, None, None]],
        *,
        maxsize: int,
        drop_oldest: bool,
        on_drop: Callable[[], None],
        name: str,
    ) -> None:
        self._produce = produce
        self._maxsize = maxsize
        self._drop_oldest = drop_oldest
        self._on_drop = on_drop
        self._stop = threading.Event()
        self._slots = threading.Semaphore(maxsize)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def items(self) -> AsyncIterator[Any]:
        """The produced items in order; re-raises the producer's exception after its items."""
        while True:
            item = await self._queue.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failure):
                raise item.error
            if not self._drop_oldest:
                self._slots.release()
            yield item

    async def stop(self) -> None:
        """Ask the producer to stop and wait (off the loop) until its thread has ended."""
        self._stop.set()
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        try:
            with contextlib.closing(self._produce(self._stop)) as produced:
                for item in produced:
                    if not self._wait_for_slot():
                        return
                    self._post(item)
        except BaseException as exc:  # delivered to the consumer, which re-raises it
            self._post(_Failure(exc))
            return
        self._post(_End())

    def _wait_for_slot(self) -> bool:
        if self._drop_oldest:
            return not self._stop.is_set()
        while not self._slots.acquire(timeout=0.1):
            if self._stop.is_set():
                return False
        return not self._stop.is_set()

    def _post(self, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody to tell
            self._loop.call_soon_threadsafe(self._deliver, item)

    def _deliver(self, item: Any) -> None:
        if self._drop_oldest and self._queue.qsize() >= self._maxsize:
            self._queue.get_nowait()
            self._on_drop()
        self._queue.put_nowait(item)


class Pacer:
    """Releases item i at ``t0 + t_i / speed`` on the monotonic clock.

    ``t0`` is fixed by the first item (it is released at once), so each release time depends
    only on the item's own timestamp: late wake-ups never accumulate into drift.

    Args:
        speed: playback speed factor (> 0); 2.0 plays twice as fast.
    """

    def __init__(self, *, speed: float = 1.0) -> None:
        check("speed", speed, context=" (1.0 = real time)", error=SourceError)
        self.speed = float(speed)
        self._t0: float | None = None

    def due(self, t: float) -> float:
        """The monotonic-clock time at which an item stamped ``t`` seconds is released."""
        if self._t0 is None:
            self._t0 = time.monotonic() - t / self.speed
        return self._t0 + t / self.speed

    async def wait(self, t: float) -> None:
        """Sleep until the item stamped ``t`` is due."""
        delay = self.due(t) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass(frozen=True)
class SourceCounts:
    """A source's counters as the streamer reads them for its stats.

    Attributes:
        bad_messages: malformed messages rejected (network sources).
        overflow: frames the source itself dropped because the consumer lagged (live sources).
        other: every other source-specific count (reconnects, gaps, decode errors, ...).
    """

    bad_messages: int = 0
    overflow: int = 0
    other: dict[str, int] = field(default_factory=dict)


class Source:
    """Base of every source: ``async with source: async for frame in source: ...``.

    Attributes:
        name: the stream id put in every Frame.
        counters: source-specific counts (``bad_messages``, ``reconnects``, ...), read by the
            streamer for its stats. Updated from the reader thread; read-only for others.
        preview: the newest image received, before it was resized (:mod:`sources.preview`):
            what the web view shows.

    Args:
        name: stream id (checked by ``check_name``).
        queue_size: frames buffered between the reader thread and the consumer.
        live: a live input (probe, network): when the consumer falls behind, the oldest
            buffered frame is dropped and counted in ``counters["overflow"]`` so the reader
            keeps up with the feed. Otherwise the reader waits for the consumer.
    """

    def __init__(self, *, name: str, queue_size: int = 8, live: bool = False) -> None:
        self.name = check_name(name)
        self.counters: dict[str, int] = {"overflow": 0} if live else {}
        self.preview = Preview()
        self._queue_size = queue_size
        self._live = live
        self._pump: ThreadPump | None = None
        self._iter: AsyncGenerator[Frame, None] | None = None

    async def __aenter__(self) -> Source:
        if self._pump is not None:
            raise SourceError(f"source {self.name!r} is already open; a source can be entered once at a time")
        await asyncio.to_thread(self._open)
        self._pump = ThreadPump(
            self._produce_with_preview,
            maxsize=self._queue_size,
            drop_oldest=self._live,
            on_drop=self._count_overflow,
            name=f"source-{self.name}",
        )
        self._iter = self._frames(self._pump.items())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        iterator, pump = self._iter, self._pump
        self._iter = self._pump = None
        if iterator is not None:
            await iterator.aclose()
        if pump is not None:
            await pump.stop()
            await asyncio.to_thread(self._close)

    def __aiter__(self) -> Source:
        return self

    async def __anext__(self) -> Frame:
        if self._iter is None:
            raise SourceError(f"source {self.name!r} is not open; iterate inside 'async with source:'")
        return await self._iter.__anext__()

    def counts(self) -> SourceCounts:
        """A snapshot of :attr:`counters` (safe to call while the reader thread updates them)."""
        other = dict(self.counters)
        return SourceCounts(
            bad_messages=int(other.pop("bad_messages", 0)), overflow=int(other.pop("overflow", 0)), other=other
        )

    def _produce_with_preview(self, stop: threading.Event) -> Generator[Any, None, None]:
        """:meth:`_produce` on the reader thread, which first binds :attr:`preview` (see sources.preview)."""
        bind_preview(self.preview)
        return self._produce(stop)

    def _count_overflow(self) -> None:
        self.counters["overflow"] += 1

    def _frame(
        self, seq: int, image: np.ndarray, t_capture: float | None = None, segment: Segment | None = None
    ) -> Frame:
        return Frame(self.name, seq, time.time() if t_capture is None else t_capture, image, segment)

    # --- to be provided by subclasses -------------------------------------------------------
    def _open(self) -> None:
        """Blocking setup, run in a thread on enter; raise SourceError on user-fixable failures."""

    def _produce(self, stop: threading.Event) -> Generator[Any, None, None]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close(self) -> None:
        """Blocking teardown, run in a thread on exit."""

    async def _frames(self, items: AsyncIterator[Any]) -> AsyncGenerator[Frame, None]:
        """Loop-side stage between the reader thread and the consumer; items are Frames here."""
        async for frame in items:
            yield frame


class PacedSource(Source):
    """A replayed source (file, generator): the reader thread yields ``(seq, t, image)`` with
    ``t`` the item's time in seconds (or ``(seq, t, image, segment)``, see ``Frame.segment``), and
    frames are released at their time (see ``Pacer``) unless pacing is off. ``t_capture`` is the
    release time.

    Args:
        name: stream id.
        queue_size: frames decoded ahead of their release.
        pacing: release frames at their timestamps (False: as fast as the consumer takes them).
        speed: playback speed factor.
    """

    def __init__(self, *, name: str, queue_size: int = 8, pacing: bool = True, speed: float = 1.0) -> None:
        super().__init__(name=name, queue_size=queue_size)
        self._pacer = Pacer(speed=speed) if pacing else None
        self.media_time: float | None = None  # the item time ``t`` of the frame released last

    async def _frames(self, items: AsyncIterator[tuple[Any, ...]]) -> AsyncGenerator[Frame, None]:
        async for seq, t, image, *segment in items:  # (seq, t, image) or (seq, t, image, segment)
            if self._pacer is not None:
                await self._pacer.wait(t)
            self.media_time = t
            yield self._frame(seq, image, segment=segment[0] if segment else None)
