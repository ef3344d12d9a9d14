"""The streaming pipeline: sources -> windows -> sampler + classifier -> sinks.

```
 source[i] --Frame--> FrameQueue (per stream, bounded, policy drop_oldest | block)
           --> windower[i] --Window--> window queue (shared, bounded, block)
           --> inference (one worker thread, batches across windows and streams)
           --> Prediction / Stats --> every sink
```

Queue policies (per connection, as in :meth:`Pipeline._compose`):

- frames into a stream's FrameQueue: ``drop_oldest`` for live feeds (a slow classifier must not
  make a live feed fall behind; every dropped frame is counted) or ``block`` (back-pressure: a file
  replayed with no pacing is simply read as fast as the classifier keeps up);
- windows into the shared window queue: ``block``, so overload always surfaces as counted frame
  drops at the first queue and memory stays bounded.

Shutdown (:meth:`Pipeline.stop`, wired to SIGINT/SIGTERM by the CLI, or the sources ending): the
sources stop, every frame already accepted is windowed, the last partial window of each stream is
classified, final stats are published, then the sinks are closed.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sinks.messages import Prediction, Stats
from sources.frame import Frame

from .inference import InferenceEngine, WindowResult
from .resample import FrameResampler, make_resampler
from .stats import StreamStats
from .window import Window, Windower

log = logging.getLogger(__name__)

Policy = Literal["drop_oldest", "block"]


class Source(Protocol):
    name: str
    counters: dict[str, int]

    async def __aenter__(self) -> Any: ...
    async def __aexit__(self, *exc: object) -> Any: ...
    def __aiter__(self) -> Any: ...


class Sink(Protocol):
    async def __aenter__(self) -> Any: ...
    async def __aexit__(self, *exc: object) -> Any: ...
    async def publish_prediction(self, prediction: Prediction) -> None: ...
    async def publish_stats(self, stats: Stats) -> None: ...


class FrameQueue:
    """Bounded FIFO of frames with an explicit overload policy.

    Args:
        maxsize: capacity in frames.
        policy: ``drop_oldest`` (put never waits; when full the oldest frame is discarded and
            counted) or ``block`` (put waits for room).
    """

    def __init__(self, maxsize: int, policy: Policy) -> None:
        if maxsize < 1:
            raise ValueError("queue size must be >= 1")
        self.maxsize = maxsize
        self.policy = policy
        self._items: deque[Frame] = deque()
        self._changed = asyncio.Condition()
        self._closed = False

    async def put(self, frame: Frame) -> int:
        """Enqueue a frame; return how many frames were dropped to make room."""
        dropped = 0
        async with self._changed:
            if self.policy == "block":
                await self._changed.wait_for(lambda: len(self._items) < self.maxsize)
            while len(self._items) >= self.maxsize:
                self._items.popleft()
                dropped += 1
            self._items.append(frame)
            self._changed.notify_all()
        return dropped

    async def close(self) -> None:
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    async def get(self) -> Frame | None:
        """Next frame, or None once the queue is closed and empty."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._items or self._closed)
            if not self._items:
                return None
            frame = self._items.popleft()
            self._changed.notify_all()
            return frame

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class PipelineSettings:
    """Knobs of the pipeline (validated by streamer.config).

    Args:
        stride: distance between window starts (window length comes from the model).
        frame_queue: frames buffered per stream before the overload policy applies.
        window_queue: windows buffered before inference (shared by all streams).
        max_batch_windows: most windows classified in one call.
        stats_interval: seconds between stats messages (a final one is always sent).
        duration: stop after this many seconds (None: until the sources end or a signal).
    """

    stride: int
    frame_queue: int = 256
    window_queue: int = 16
    max_batch_windows: int = 8
    stats_interval: float = 5.0
    duration: float | None = None
    fps: float | None = None  # the model's frame rate: streams are resampled to it (None: every frame)


@dataclass
class _Stream:
    source: Source
    policy: Policy
    queue: FrameQueue
    windower: Windower
    stats: StreamStats
    error: BaseException | None = None
    reading: bool = False
    resampler: FrameResampler | None = None


@dataclass
class RunSummary:
    """What a finished run did: the final stats per stream and the first source error, if any."""

    final: dict[str, Stats] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)


_END = object()  # a stream's windower is done


class Pipeline:
    """Wires sources, the inference engine and sinks (see the module docstring).

    Args:
        sources: (source, policy) pairs; stream names must be unique.
        engine: the inference engine.
        sinks: where predictions and stats go.
        settings: pipeline knobs.
    """

    def __init__(self, *, sources: Sequence[tuple[Source, Policy]], engine: InferenceEngine,
                 sinks: Sequence[Sink], settings: PipelineSettings) -> None:
        names = [s.name for s, _ in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"stream names must be unique, got {names}")
        self.engine = engine
        self.sinks = list(sinks)
        self.settings = settings
        self.streams = [
            _Stream(
                source=src, policy=policy, queue=FrameQueue(settings.frame_queue, policy),
                windower=Windower(stream=src.name, num_frames=engine.num_frames, stride=settings.stride),
                stats=StreamStats(stream=src.name, num_frames=engine.num_frames),
                resampler=make_resampler(settings.fps, src),
            )
            for src, policy in sources
        ]
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Ask for a clean shutdown (safe to call from a signal handler)."""
        self._stop.set()

    async def run(self) -> RunSummary:
        async with contextlib.AsyncExitStack() as stack:
            for sink in self.sinks:
                await stack.enter_async_context(sink)
            for st in self.streams:
                await stack.enter_async_context(st.source)
            return await self._compose()

    async def _compose(self) -> RunSummary:
        windows: asyncio.Queue = asyncio.Queue(self.settings.window_queue)
        ingest = [asyncio.create_task(self._ingest(st), name=f"ingest:{st.source.name}") for st in self.streams]
        windowing = [asyncio.create_task(self._window(st, windows)) for st in self.streams]
        infer = asyncio.create_task(self._infer(windows))
        ticker = asyncio.create_task(self._tick())
        stopper = asyncio.create_task(self._stop_when_asked(ingest))
        try:
            await asyncio.gather(*ingest, *windowing, infer)
        finally:
            for task in (ticker, stopper, *ingest, *windowing, infer):
                task.cancel()
            await asyncio.gather(ticker, stopper, *ingest, *windowing, infer, return_exceptions=True)
        summary = RunSummary()
        for st in self.streams:
            final = self._snapshot(st, final=True)
            await self._publish_stats(final)
            summary.final[st.source.name] = final
            if st.error is not None:
                summary.errors.append(st.error)
        return summary

    async def _stop_when_asked(self, ingest: list[asyncio.Task]) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), self.settings.duration)
        except TimeoutError:
            self._stop.set()
        for st, task in zip(self.streams, ingest):
            if st.reading:  # waiting on the source: interrupt it; a frame being queued is kept
                task.cancel()

    async def _ingest(self, st: _Stream) -> None:
        """Source -> frame queue. Ends the stream (never the run) on a source error."""
        frames = aiter(st.source)
        try:
            while not self._stop.is_set():
                st.reading = True
                try:
                    frame = await anext(frames)
                except StopAsyncIteration:
                    break
                finally:
                    st.reading = False
                st.stats.frame_in()
                if st.resampler is not None and not st.resampler.keep(frame):
                    st.stats.resampled_out()
                    continue
                if dropped := await st.queue.put(frame):
                    st.stats.dropped(dropped)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a source error ends this stream; frames already in are kept
            if len(self.streams) > 1:  # the others go on; say so now (the run's summary repeats it)
                log.error("stream %s stopped: %s", st.source.name, exc)
            st.error = exc
        finally:
            await st.queue.close()

    async def _window(self, st: _Stream, windows: asyncio.Queue) -> None:
        """Frame queue -> windows; the last, partial window when the stream ends."""
        while (frame := await st.queue.get()) is not None:
            if st.windower.next_in_window:  # its sampler copy now, off the window-close path
                self.engine.prepare(st.windower.stream, frame)
            if (w := st.windower.push(frame)) is not None:
                await windows.put(w)
        if (w := st.windower.flush()) is not None:
            await windows.put(w)
        await windows.put(_END)

    async def _infer(self, windows: asyncio.Queue) -> None:
        """Batches of windows -> engine (in a thread) -> predictions."""
        open_streams = len(self.streams)
        stats = {st.source.name: st.stats for st in self.streams}
        while open_streams:
            batch = [await windows.get()]
            while len(batch) < self.settings.max_batch_windows and not windows.empty():
                batch.append(windows.get_nowait())
            open_streams -= sum(1 for w in batch if w is _END)
            todo = [w for w in batch if w is not _END]
            if not todo:
                continue
            results = await asyncio.to_thread(self.engine.process, todo)
            for res in results:
                w = res.window
                stats[w.stream].window_done(w, res.selected, res.backbone_calls)
                if w.frames:
                    await self._publish_prediction(res, stats[w.stream])

    def _prediction(self, res: WindowResult) -> Prediction:
        w = res.window
        names = self.engine.class_names
        best = max(range(len(res.probs)), key=res.probs.__getitem__)
        return Prediction(
            stream=w.stream, window=w.index, first_seq=w.frames[0].seq, last_seq=w.frames[-1].seq,
            t_first=w.frames[0].t_capture, t_last=w.frames[-1].t_capture, selected=res.selected,
            probs={n: round(p, 6) for n, p in zip(names, res.probs)}, label=names[best],
            model=self.engine.model_name, latency_ms=round((time.time() - w.frames[-1].t_capture) * 1000.0, 2),
            padded=w.padded,
        )

    async def _publish_prediction(self, res: WindowResult, stats: StreamStats) -> None:
        pred = self._prediction(res)
        for sink in self.sinks:
            await sink.publish_prediction(pred)
        stats.published(t_capture_last=pred.t_last, t_close=res.window.t_close)

    async def _publish_stats(self, stats: Stats) -> None:
        for sink in self.sinks:
            await sink.publish_stats(stats)

    def _snapshot(self, st: _Stream, *, final: bool) -> Stats:
        counters = dict(st.source.counters)
        bad = int(counters.pop("bad_messages", 0))
        upstream_dropped = int(counters.pop("overflow", 0))
        extra: dict[str, Any] = {"policy": st.policy, **counters}
        for sink in self.sinks:  # e.g. the MQTT sink's buffer overflow and reconnects
            if isinstance(getattr(sink, "counters", None), dict):
                extra[type(sink).__name__] = dict(sink.counters)
        if final and st.error is not None:
            extra["error"] = str(st.error)
        return st.stats.snapshot(bad_messages=bad, upstream_dropped=upstream_dropped, final=final, extra=extra)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_interval)
            for st in self.streams:
                await self._publish_stats(self._snapshot(st, final=False))
