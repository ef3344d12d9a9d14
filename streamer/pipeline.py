"""The streaming pipeline: sources -> windows -> sampler + classifier -> publishing -> sinks.

```
 source[i] --Frame--> FrameQueue[i] (bounded, policy drop_oldest | block)
           --> window[i] --Window--> window queue (shared, bounded, block)
           --> infer (one worker thread, batches across windows and streams)
           --WindowResult--> publish queue (bounded, block)
           --> publish --Prediction / Stats--> the sinks (one FanOut) and the observers
```

Every stage is one task and every connection one queue with an explicit policy, all created in
:meth:`Pipeline._compose`:

- frames into a stream's FrameQueue: ``drop_oldest`` for live feeds (a slow classifier must not
  make a live feed fall behind; every dropped frame is counted) or ``block`` (back-pressure: a file
  replayed with no pacing is simply read as fast as the classifier keeps up);
- windows into the shared window queue: ``block``, so overload always surfaces as counted frame
  drops at the first queue and memory stays bounded;
- results into the publish queue: ``block``. Publishing has its own stage so that a slow sink (a
  full disk, a blocked console) does not stall classification until the queue is full; the time
  the classifier then waits is counted (``publish_wait_ms`` in the stats' extra), so drops caused
  by a sink are not blamed on the classifier.

A stream that pauses (no frame for ``gap`` seconds while a window is open, or a capture-time jump
larger than ``gap``) has its open window closed at once, padded, and the first window after the
pause says so (``gap_before``, ``gap_ms`` in the prediction). A stream made of segments (the files
of a DICOM exam, ``Frame.segment``) has its window closed the same way at each segment boundary,
and each prediction names its segment.

Shutdown (:meth:`Pipeline.stop`, wired to SIGINT/SIGTERM by the CLI, or the sources ending): the
sources stop, every frame already accepted is windowed, the last partial window of each stream is
classified and published, final stats are published, then the sinks are closed. A stream whose
source ends while others go on (a DICOM exam played to its end) is ended on its own: its final
stats (``final: true``) are published as soon as its last window is, it is logged (``stream NAME
ended``), and no periodic stats follow, so observers see it ended, not stalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sinks import FanOut, Sink
from sinks.messages import Prediction, Stats
from sources.base import SourceCounts
from sources.frame import Frame, Segment

from .budget import FrameBudget, ShrinkControl
from .inference import InferenceEngine, WindowResult
from .resample import FrameResampler, make_resampler
from .stats import StreamStats
from .window import Window, Windower

log = logging.getLogger(__name__)

Policy = Literal["shrink", "drop_oldest", "block"]


class FrameSource(Protocol):
    """What the pipeline needs of a source (every ``sources.base.Source`` is one): a name, an
    async context, frames by async iteration and its counters."""

    name: str

    def counts(self) -> SourceCounts: ...
    def __aiter__(self) -> AsyncIterator[Frame]: ...
    async def __aenter__(self) -> Any: ...
    async def __aexit__(self, *exc: Any) -> Any: ...


class PipelineObserver(Protocol):
    """Watches the pipeline without slowing it (the web view, the metrics): every method is called
    on the event loop, must return at once, and must never raise."""

    def on_frame(self, stream: str, frame: Frame) -> None: ...
    def on_window(self, result: WindowResult, prediction: Prediction) -> None: ...
    def on_stats(self, stats: Stats) -> None: ...
    def on_stream_end(self, stream: str, error: BaseException | None) -> None:
        """The stream's source ended (``error``: why it failed, None when it ended cleanly); its
        last windows are still to come."""


class FrameQueue:
    """Bounded FIFO of frames with an explicit overload policy.

    Args:
        maxsize: capacity in frames.
        policy: ``drop_oldest`` (put never waits; when full the oldest frame is discarded and
            counted), ``shrink`` (the same at this queue; the pipeline lowers k_max first, so it
            rarely fills) or ``block`` (put waits for room).
    """

    def __init__(self, maxsize: int, policy: Policy) -> None:
        if maxsize < 1:
            raise ValueError("queue size must be >= 1")
        self.maxsize = maxsize
        self.policy = policy
        self._items: deque[Frame] = deque()
        self._changed = asyncio.Condition()
        self._closed = False
        self.high_water = 0  # the most frames it ever held at once

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
            self.high_water = max(self.high_water, len(self._items))
            self._changed.notify_all()
        return dropped

    async def close(self) -> None:
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    async def get(self, timeout: float | None = None) -> Frame | None:
        """Next frame, or None once the queue is closed and empty.

        Raises:
            TimeoutError: no frame came within ``timeout`` seconds (nothing is taken then).
        """
        async with self._changed:
            ready = self._changed.wait_for(lambda: self._items or self._closed)
            if timeout is None or self._items:  # a frame waiting: no timer (the per-frame path)
                await ready
            else:
                await asyncio.wait_for(ready, timeout)
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
        publish_queue: classified windows buffered before the sinks (shared by all streams).
        stats_interval: seconds between stats messages (a final one is always sent).
        duration: stop after this many seconds (None: until the sources end or a signal).
        gap: seconds without a frame (or a capture-time jump that long) after which a stream's
            open window is closed, padded, and the next one marked ``gap_before`` (0: never).
        fps: the model's frame rate: streams are resampled to it (None: every frame).
        budget: backbone frames per second for the whole process (None: no cap), see
            :mod:`streamer.budget`.
        early_exit: use the model's exit rule (stop adding frames to a window once its
            prediction is settled); False: every window uses k_max frames.
    """

    stride: int
    frame_queue: int = 256
    window_queue: int = 16
    max_batch_windows: int = 8
    publish_queue: int = 64
    stats_interval: float = 5.0
    duration: float | None = None
    gap: float = 2.0
    fps: float | None = None
    budget: float | None = None
    early_exit: bool = True


@dataclass
class _Stream:
    source: FrameSource
    policy: Policy
    queue: FrameQueue
    windower: Windower
    stats: StreamStats
    error: BaseException | None = None
    reading: bool = False
    gaps: int = 0  # pauses that closed a window early
    longest_gap_ms: float = 0.0
    resampler: FrameResampler | None = None
    final: Stats | None = None  # published when the stream ended (its last window published)


@dataclass
class RunSummary:
    """What a finished run did: the final stats per stream and the source errors, in the order
    they happened (empty when every source ended cleanly)."""

    final: dict[str, Stats] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)


_END = object()  # every stream's windows are classified


@dataclass(frozen=True)
class _StreamEnd:
    """A stream's windower is done: follows its last window through inference and publishing."""

    stream: str


class Pipeline:
    """Wires sources, the inference engine and sinks (see the module docstring).

    Args:
        sources: (source, policy) pairs; stream names must be unique.
        engine: the inference engine.
        sinks: where predictions and stats go (published to in the order given).
        settings: pipeline knobs.
        observers: watchers of frames, windows and stats (see :class:`PipelineObserver`).
    """

    def __init__(
        self,
        *,
        sources: Sequence[tuple[FrameSource, Policy]],
        engine: InferenceEngine,
        sinks: Sequence[Sink],
        settings: PipelineSettings,
        observers: Sequence[PipelineObserver] = (),
    ) -> None:
        names = [s.name for s, _ in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"stream names must be unique, got {names}")
        self.engine = engine
        self.sinks = FanOut(*sinks)
        self.observers = list(observers)
        self.settings = settings
        self.streams = [
            _Stream(
                source=src,
                policy=policy,
                queue=FrameQueue(settings.frame_queue, policy),
                windower=Windower(stream=src.name, num_frames=engine.num_frames, stride=settings.stride),
                stats=StreamStats(stream=src.name, num_frames=engine.num_frames),
                resampler=make_resampler(settings.fps, src),
            )
            for src, policy in sources
        ]
        self._stop = asyncio.Event()
        self._publish_wait_s = 0.0  # time the infer stage waited for room in the publish queue
        self.budget = FrameBudget(settings.budget) if settings.budget else None
        shrinking = any(policy == "shrink" for _, policy in sources)
        self.shrink = ShrinkControl(engine.k, high=settings.max_batch_windows) if shrinking else None

    def stop(self) -> None:
        """Ask for a clean shutdown (safe to call from a signal handler)."""
        self._stop.set()

    async def run(self) -> RunSummary:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.sinks)
            for st in self.streams:
                await stack.enter_async_context(st.source)
            return await self._compose()

    async def _compose(self) -> RunSummary:
        """The graph: each stage a task, each connection a bounded queue (policy in the comment)."""
        windows: asyncio.Queue = asyncio.Queue(self.settings.window_queue)  # block
        results: asyncio.Queue = asyncio.Queue(self.settings.publish_queue)  # block
        ingest = [self._task(f"ingest:{st.source.name}", self._ingest(st)) for st in self.streams]  # -> st.queue
        stages = [
            *ingest,
            *(self._task(f"window:{st.source.name}", self._window(st, windows)) for st in self.streams),
            self._task("infer", self._infer(windows, results)),
            self._task("publish", self._publish(results)),
        ]
        helpers = [
            self._task("stats", self._tick()),
            self._task("stop", self._stop_when_asked(ingest)),
            self._task("observe", self._observe_tick()),
        ]
        try:
            await asyncio.gather(*stages)
        finally:
            for task in (*helpers, *stages):
                task.cancel()
            await asyncio.gather(*helpers, *stages, return_exceptions=True)
        summary = RunSummary()
        for st in self.streams:
            if st.final is None:  # not ended through the publish stage (the run was cut short)
                await self._end_stream(st)
            assert st.final is not None
            summary.final[st.source.name] = st.final
            if st.error is not None:
                summary.errors.append(st.error)
        return summary

    @staticmethod
    def _task(name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task:
        return asyncio.create_task(coro, name=name)

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
                for obs in self.observers:
                    obs.on_frame(st.source.name, frame)
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
            for obs in self.observers:
                obs.on_stream_end(st.source.name, st.error)

    async def _window(self, st: _Stream, windows: asyncio.Queue) -> None:
        """Frame queue -> windows; an open window is closed early when the stream pauses, and the
        last, partial window when the stream ends."""
        gap = self.settings.gap or None
        last_t: float | None = None
        segment: Segment | None = None
        while True:
            try:
                frame = await st.queue.get(timeout=gap if st.windower.open else None)
            except TimeoutError:  # no frame for `gap` s: classify what the open window holds now
                await self._put_window(windows, st.windower.flush())
                continue
            if frame is None:
                break
            if last_t is not None and gap is not None and frame.t_capture - last_t > gap:
                await self._put_window(windows, st.windower.flush())  # before and after never share a window
                self._paused(st, (frame.t_capture - last_t) * 1000.0)
            elif last_t is not None and frame.segment != segment:  # a new file of an exam: its own windows
                await self._put_window(windows, st.windower.flush())
            last_t, segment = frame.t_capture, frame.segment
            if st.windower.next_in_window:  # its sampler copy now, on the engine's thread, off the window-close path
                self.engine.accept(st.windower.stream, frame)
            await self._put_window(windows, st.windower.push(frame))
        await self._put_window(windows, st.windower.flush())
        await windows.put(_StreamEnd(st.source.name))

    def _paused(self, st: _Stream, ms: float) -> None:
        st.windower.mark_gap(ms)
        st.gaps += 1
        st.longest_gap_ms = max(st.longest_gap_ms, ms)
        log.info("stream %s paused for %.2f s; its open window was closed early", st.source.name, ms / 1000.0)

    @staticmethod
    async def _put_window(windows: asyncio.Queue, window: Window | None) -> None:
        if window is not None:
            await windows.put(window)

    async def _infer(self, windows: asyncio.Queue, results: asyncio.Queue) -> None:
        """Batches of windows -> engine (its worker thread; the loop awaits the future) -> the publish queue."""
        open_streams = len(self.streams)
        stats = {st.source.name: st.stats for st in self.streams}
        try:
            while open_streams:
                batch = [await windows.get()]
                while len(batch) < self.settings.max_batch_windows and not windows.empty():
                    batch.append(windows.get_nowait())
                ended = [w for w in batch if isinstance(w, _StreamEnd)]
                open_streams -= len(ended)
                todo = [w for w in batch if not isinstance(w, _StreamEnd)]
                if not todo:
                    for end in ended:
                        await results.put(end)
                    continue
                k_max = self.shrink.update(windows.qsize()) if self.shrink is not None else None
                allowance = self.budget.allowance() if self.budget is not None else None
                done = await asyncio.wrap_future(
                    self.engine.submit(todo, k_max=k_max, allowance=allowance, early_exit=self.settings.early_exit)
                )
                if self.budget is not None:
                    self.budget.spend(sum(res.frames_embedded for res in done))
                for res in done:
                    w = res.window
                    stats[w.stream].window_done(w, res.selected, res.frames_embedded, exit=res.exit)
                    if w.frames:
                        t0 = time.monotonic()
                        await results.put(res)
                        self._publish_wait_s += time.monotonic() - t0
                for end in ended:  # after the stream's last results
                    await results.put(end)
        finally:
            await results.put(_END)

    async def _publish(self, results: asyncio.Queue) -> None:
        """The publish queue -> predictions to the sinks and observers."""
        streams = {st.source.name: st for st in self.streams}
        while (res := await results.get()) is not _END:
            if isinstance(res, _StreamEnd):  # the stream is over: its final stats now, not at the run's end
                await self._end_stream(streams[res.stream])
                continue
            pred = self._prediction(res)
            await self.sinks.publish_prediction(pred)
            streams[pred.stream].stats.published(
                t_capture_last=pred.t_last, t_close=res.window.t_close, padded=pred.padded
            )
            if self.observers:  # the counters as of this window, with it (a dashboard's strip and counters agree)
                snapshot = self._snapshot(streams[pred.stream], final=False)
                for obs in self.observers:
                    obs.on_window(res, pred)
                    obs.on_stats(snapshot)

    async def _end_stream(self, st: _Stream) -> None:
        st.final = self._snapshot(st, final=True)
        log.info(
            "stream %s ended: %d frames in, %d windows%s",
            st.source.name,
            st.final.frames_in,
            st.final.windows,
            f" ({st.error})" if st.error is not None else "",
        )
        await self._publish_stats(st.final)

    def _prediction(self, res: WindowResult) -> Prediction:
        w = res.window
        names = self.engine.class_names
        best = max(range(len(res.probs)), key=res.probs.__getitem__)
        return Prediction(
            stream=w.stream,
            window=w.index,
            first_seq=w.frames[0].seq,
            last_seq=w.frames[-1].seq,
            t_first=w.frames[0].t_capture,
            t_last=w.frames[-1].t_capture,
            selected=res.selected,
            probs={n: round(p, 6) for n, p in zip(names, res.probs)},
            label=names[best],
            model=self.engine.model_name,
            latency_ms=round((time.time() - w.frames[-1].t_capture) * 1000.0, 2),
            padded=w.padded,
            gap_before=w.gap_before_ms > 0,
            gap_ms=round(w.gap_before_ms, 2),
            segment=w.frames[0].segment.name if w.frames[0].segment else None,
            instance=w.frames[0].segment.instance if w.frames[0].segment else None,
            frames_used=len(res.selected),
            exit=res.exit,
            k_max=res.k_max,
        )

    async def _publish_stats(self, stats: Stats) -> None:
        await self.sinks.publish_stats(stats)
        for obs in self.observers:
            obs.on_stats(stats)

    def _snapshot(self, st: _Stream, *, final: bool) -> Stats:
        counts = st.source.counts()
        extra: dict[str, Any] = {
            "policy": st.policy,
            **counts.other,
            **self.sinks.counters(),
            "gaps_closed": st.gaps,
            "longest_gap_ms": round(st.longest_gap_ms, 2),
            "publish_wait_ms": round(self._publish_wait_s * 1000.0, 2),
            "k_max_in_force": self.shrink.limit if self.shrink is not None else self.engine.k,
        }
        if self.shrink is not None:
            extra["k_max_shrinks"] = self.shrink.shrinks
        if self.budget is not None:
            extra["budget_fps"] = self.budget.rate
        if final and st.error is not None:
            extra["error"] = str(st.error)
        return st.stats.snapshot(
            bad_messages=counts.bad_messages, upstream_dropped=counts.overflow, final=final, extra=extra
        )

    async def _observe_tick(self) -> None:
        """Stats for the observers every second (the sinks get them every stats_interval)."""
        while self.observers:
            await asyncio.sleep(1.0)
            for st in self.streams:
                if st.final is not None:
                    continue
                stats = self._snapshot(st, final=False)
                for obs in self.observers:
                    obs.on_stats(stats)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_interval)
            for st in self.streams:
                if st.final is None:  # an ended stream has said its last word
                    await self._publish_stats(self._snapshot(st, final=False))
