"""The pipeline in-process: overload policy, several streams, accounting."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from streamer_help import ListSink, accounted

from sources.synthetic import SyntheticSource
from streamer.pipeline import Pipeline, PipelineSettings


async def test_fast_source_drops_oldest_counts_them_and_stays_bounded(engine):
    n = 4000
    src = SyntheticSource(name="fast", fps=20000, size=32, frames=n, clip_frames=16)
    sink = ListSink()
    queue_size = 16
    pipe = Pipeline(
        sources=[(src, "drop_oldest")],
        engine=engine,
        sinks=[sink],
        settings=PipelineSettings(stride=8, frame_queue=queue_size, window_queue=2, max_batch_windows=2),
    )
    summary = await pipe.run()
    final = summary.final["fast"]
    assert final.frames_in == n and final.frames_dropped > 0 and accounted(final)
    assert pipe.streams[0].queue.high_water == queue_size  # full (hence the drops), never more
    assert final.windows == len(sink.predictions)
    assert engine.cached == 0


async def test_block_policy_loses_nothing_and_streams_stay_separate(engine):
    sources = [
        SyntheticSource(name=f"s{i}", pacing=False, size=32, frames=50 + 7 * i, seed=i, clip_frames=16)
        for i in range(3)
    ]
    sink = ListSink()
    pipe = Pipeline(
        sources=[(s, "block") for s in sources],
        engine=engine,
        sinks=[sink],
        settings=PipelineSettings(stride=4, frame_queue=8, max_batch_windows=4),
    )
    summary = await pipe.run()
    for i in range(3):
        final = summary.final[f"s{i}"]
        assert final.frames_in == 50 + 7 * i and final.frames_dropped == 0 and accounted(final)
        mine = [p for p in sink.predictions if p.stream == f"s{i}"]
        assert [p.window for p in mine] == list(range(len(mine))) == list(range(final.windows))
        assert all(p.first_seq <= min(p.selected) and max(p.selected) <= p.last_seq for p in mine)
    finals = [s for s in sink.stats if s.final]
    assert sorted(s.stream for s in finals) == ["s0", "s1", "s2"]


async def test_stop_keeps_accepted_frames(engine):
    src = SyntheticSource(name="live", fps=200, size=32, clip_frames=16)  # endless
    sink = ListSink()
    pipe = Pipeline(
        sources=[(src, "drop_oldest")],
        engine=engine,
        sinks=[sink],
        settings=PipelineSettings(stride=8, stats_interval=0.2),
    )
    asyncio.get_running_loop().call_later(1.0, pipe.stop)
    summary = await asyncio.wait_for(pipe.run(), 30)
    final = summary.final["live"]
    assert final.frames_in > 0 and accounted(final) and final.final
    assert any(not s.final for s in sink.stats)  # periodic stats were published too


@pytest.mark.parametrize("stride", [4, 8, 11])  # overlapping, adjacent, with gaps between windows
async def test_copies_made_on_arrival_are_all_released(engine, stride):
    """The pipeline makes each frame's sampler copy as it arrives; when the run ends every copy
    and embedding has been released, including frames in no window (stride > T)."""
    src = SyntheticSource(name="s", pacing=False, size=32, frames=101, clip_frames=16)
    sink = ListSink()
    pipe = Pipeline(sources=[(src, "block")], engine=engine, sinks=[sink], settings=PipelineSettings(stride=stride))
    summary = await pipe.run()
    final = summary.final["s"]
    assert final.frames_in == 101 and accounted(final)
    assert final.windows == len(sink.predictions) > 0
    assert engine.held_copies == 0 and engine.cached == 0


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting what is handed to it (asyncio.to_thread lands here)."""

    def __init__(self) -> None:
        super().__init__(1)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


async def test_the_loop_awaits_the_engine_without_parking_a_thread(engine):
    """The loop's default executor (where asyncio.to_thread runs) sees the sources open and close,
    never a batch: a run of 4x the windows hands it no more work."""
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    handed = []
    for frames in (64, 256):
        before = executor.submitted
        src = SyntheticSource(name="s", pacing=False, size=32, frames=frames, clip_frames=16)
        sink = ListSink()
        settings = PipelineSettings(stride=8, max_batch_windows=1)
        summary = await Pipeline(sources=[(src, "block")], engine=engine, sinks=[sink], settings=settings).run()
        assert summary.final["s"].windows == len(sink.predictions) >= frames // 8
        handed.append(executor.submitted - before)
    assert handed[0] == handed[1]  # with asyncio.to_thread(engine.process, ...): one more per batch
