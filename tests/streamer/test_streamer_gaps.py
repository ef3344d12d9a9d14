"""A stream that pauses, and a sink that stalls: what the pipeline does about each."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from streamer_help import ListSink, accounted
from waiting import until

from sources.base import Source
from streamer.pipeline import Pipeline, PipelineSettings


class PausingSource(Source):
    """A live-like source run by the real Source machinery (reader thread, pump): ``before`` frames
    at ``fps``, then nothing for ``pause`` seconds, then ``after`` frames. Each frame is stamped
    when it is produced, as a probe stamps at decode. ``jump`` instead of a real pause shifts the
    capture stamps of the frames after it (a sender whose clock says it paused)."""

    def __init__(self, *, before: int, after: int, pause: float = 0.0, jump: float = 0.0, fps: float = 60.0) -> None:
        super().__init__(name="paused")
        self.before, self.after, self.pause, self.jump, self.fps = before, after, pause, jump, fps
        self.t_last_before: float | None = None
        self.t_first_after: float | None = None

    def _produce(self, stop: threading.Event):
        rng = np.random.default_rng(0)
        for seq in range(self.before + self.after):
            if stop.is_set():
                return
            if seq == self.before and self.pause:
                time.sleep(self.pause)  # the pause under test, not a synchronisation
            time.sleep(1.0 / self.fps)  # the device's own pace
            t = time.time() + (self.jump if seq >= self.before else 0.0)
            if seq == self.before - 1:
                self.t_last_before = t
            if seq == self.before:
                self.t_first_after = t
            yield self._frame(seq, rng.integers(0, 255, (32, 32), dtype=np.uint8), t)


@pytest.mark.parametrize(("stride", "before"), [(8, 12), (4, 14)])
async def test_a_pause_closes_the_open_window_at_once_and_marks_the_next(engine, stride, before):
    # T = 8. Stride 8: window 0-7, then 8-11 left open by the pause. Stride 4: windows 0-7 and
    # 4-11, then 8-13 open, of which 12-13 are in no window yet.
    src = PausingSource(before=before, after=16, pause=2.5)
    sink = ListSink()
    pipe = Pipeline(
        sources=[(src, "drop_oldest")],
        engine=engine,
        sinks=[sink],
        settings=PipelineSettings(stride=stride, gap=0.8, stats_interval=3600),
    )
    await pipe.run()
    preds = sink.predictions
    real_gap_ms = (src.t_first_after - src.t_last_before) * 1000.0
    after_first = before
    before = [p for p in preds if p.last_seq < after_first]
    after = [p for p in preds if p.first_seq >= after_first]
    assert len(before) + len(after) == len(preds), "a window mixes frames from both sides of the pause"
    # The window open at the pause was classified during the pause, padded, not when frames came back.
    straddle = before[-1]
    assert straddle.last_seq == after_first - 1 and straddle.padded > 0
    t_straddle = sink.received[preds.index(straddle)]
    assert t_straddle < src.t_first_after, "the open window waited for the stream to come back"
    # The first window after the pause says so, with the pause measured from the real frames.
    assert after[0].gap_before and after[0].first_seq == after_first
    assert abs(after[0].gap_ms - real_gap_ms) < 500.0
    assert not any(p.gap_before for p in preds if p is not after[0])
    final = sink.stats[-1]
    assert final.final and accounted(final)
    assert final.extra["gaps_closed"] == 1
    assert abs(final.extra["longest_gap_ms"] - real_gap_ms) < 500.0


async def test_a_capture_time_jump_splits_windows_without_a_real_pause(engine):
    src = PausingSource(before=12, after=12, jump=30.0, fps=500.0)
    sink = ListSink()
    pipe = Pipeline(
        sources=[(src, "block")],
        engine=engine,
        sinks=[sink],
        settings=PipelineSettings(stride=8, gap=1.0, stats_interval=3600),
    )
    await pipe.run()
    preds = sink.predictions
    assert [(p.first_seq, p.last_seq, p.gap_before) for p in preds] == [
        (0, 7, False),
        (8, 11, False),
        (12, 19, True),
        (20, 23, False),
    ]
    assert preds[2].gap_ms == pytest.approx(30_000.0, abs=500.0)
    assert accounted(sink.stats[-1])


async def test_gap_zero_keeps_one_schedule_across_a_jump(engine):
    src = PausingSource(before=12, after=12, jump=30.0, fps=500.0)
    sink = ListSink()
    pipe = Pipeline(
        sources=[(src, "block")],
        engine=engine,
        sinks=[sink],
        settings=PipelineSettings(stride=8, gap=0.0, stats_interval=3600),
    )
    await pipe.run()
    assert [(p.first_seq, p.last_seq) for p in sink.predictions] == [(0, 7), (8, 15), (16, 23)]
    assert not any(p.gap_before for p in sink.predictions)


async def test_a_stalled_sink_does_not_stall_classification(engine):
    hold = asyncio.Event()
    src = PausingSource(before=64, after=0, fps=2000.0)
    sink = ListSink(hold=hold)
    pipe = Pipeline(
        sources=[(src, "block")],
        engine=engine,
        sinks=[sink],
        settings=PipelineSettings(stride=8, publish_queue=16, gap=0.0, stats_interval=3600),
    )
    run = asyncio.create_task(pipe.run())
    stats = pipe.streams[0].stats
    await until(lambda: stats.windows >= 8, "every window classified")
    assert stats.windows == 8 and not sink.predictions  # while the sink has published nothing
    hold.set()
    await run
    assert [p.window for p in sink.predictions] == list(range(8))
    assert accounted(sink.stats[-1])


async def test_a_sink_slower_than_the_publish_queue_makes_the_classifier_wait_and_says_how_long(engine):
    hold = asyncio.Event()
    src = PausingSource(before=64, after=0, fps=2000.0)
    sink = ListSink(hold=hold)
    pipe = Pipeline(
        sources=[(src, "block")],
        engine=engine,
        sinks=[sink],
        settings=PipelineSettings(stride=8, publish_queue=2, gap=0.0, stats_interval=3600),
    )
    run = asyncio.create_task(pipe.run())
    stats = pipe.streams[0].stats
    # The sink holds window 0, the publish queue takes 1 and 2, window 3 waits to join them.
    await until(lambda: stats.windows >= 4, "the publish queue filled")
    t_blocked = time.monotonic()
    await until(lambda: stats.frames_in == 64, "the whole stream read (all 8 windows cut)")
    assert stats.windows == 4  # back-pressure: the classifier took none of the windows after 3
    held_ms = 1000.0 * (time.monotonic() - t_blocked)
    hold.set()
    await run
    final = sink.stats[-1]
    assert [p.window for p in sink.predictions] == list(range(8))
    assert final.extra["publish_wait_ms"] >= held_ms  # the wait, measured from before we saw it
    assert accounted(final)
