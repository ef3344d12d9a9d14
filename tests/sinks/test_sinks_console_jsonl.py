"""ConsoleSink lines, JsonlSink files, and FanOut to both."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from sinks_help import prediction, stats
from waiting import until

from core.errors import SinkError
from sinks import FanOut
from sinks.console import ConsoleSink
from sinks.jsonl import JsonlSink


async def test_console_prints_one_readable_line_per_message():
    out = io.StringIO()
    async with ConsoleSink(out) as sink:
        await sink.publish_prediction(prediction(2))
        await sink.publish_stats(stats(windows=3, final=True))
    lines = out.getvalue().splitlines()
    assert lines == [
        "us1 #2 seq 32-47: a_lines 0.75 | picked 4 | 14.5 ms",
        "us1 stats (final): in 48 forwarded 12 skipped 36 dropped 0 bad 1 windows 3 | 30.0 fps"
        " | latency p50/p95/p99 20.0/31.5/40.2 ms | compute saved 75%",
    ]


async def test_console_can_hide_stats_and_shows_padding():
    out = io.StringIO()
    padded = dataclasses.replace(prediction(5), padded=3)
    async with ConsoleSink(out, show_stats=False) as sink:
        await sink.publish_stats(stats())
        await sink.publish_prediction(padded)
    assert out.getvalue() == "us1 #5 seq 80-95 (+3 padded): b_lines 0.75 | picked 4 | 17.5 ms\n"


async def test_jsonl_writes_one_object_per_line_and_appends(tmp_path):
    path = tmp_path / "run.jsonl"
    async with JsonlSink(path) as sink:
        await sink.publish_prediction(prediction(0))
        await sink.publish_stats(stats())
        # Written by the writer thread and flushed per line: readable while the sink is still open.
        await until(lambda: len(path.read_text().splitlines()) == 2, "both lines in the file")
    async with JsonlSink(str(path)) as sink:
        await sink.publish_prediction(prediction(1))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["type"] for r in rows] == ["prediction", "stats", "prediction"]
    assert rows[0] == prediction(0).to_dict()
    assert rows[1] == stats().to_dict()
    assert rows[2]["window"] == 1


@pytest.mark.parametrize("where", ["missing_dir/out.jsonl", "."])
async def test_unwritable_jsonl_path_is_a_sink_error_naming_it(tmp_path, where):
    path = tmp_path / where
    with pytest.raises(SinkError) as caught:
        async with JsonlSink(path):
            pass
    message = str(caught.value)
    assert f"'{path}'" in message and "writable directory" in message


async def test_fanout_publishes_to_every_sink_and_closes_them(tmp_path):
    out = io.StringIO()
    path = tmp_path / "both.jsonl"
    async with FanOut(ConsoleSink(out), JsonlSink(path)) as sinks:
        for w in range(3):
            await sinks.publish_prediction(prediction(w))
        await sinks.publish_stats(stats())
    assert len(out.getvalue().splitlines()) == 4
    assert [json.loads(line)["type"] for line in path.read_text().splitlines()] == ["prediction"] * 3 + ["stats"]


async def test_fanout_closes_the_sinks_already_open_when_one_fails(tmp_path):
    good = JsonlSink(tmp_path / "good.jsonl")
    with pytest.raises(SinkError):
        async with FanOut(good, JsonlSink(tmp_path / "no" / "such.jsonl")):
            pass
    with pytest.raises(RuntimeError, match="not open"):
        await good.publish_prediction(prediction(0))


async def test_console_write_failure_surfaces_as_sink_error_without_blocking_publish():
    class Broken(io.StringIO):
        def write(self, text):
            raise OSError(28, "No space left on device")

    sink = ConsoleSink(Broken())
    with pytest.raises(SinkError, match="cannot write the console: .*No space left"):
        async with sink:
            await sink.publish_prediction(prediction(0))  # returns at once; the failure comes later
            for i in range(1, 50):
                await sink.publish_prediction(prediction(i))


async def test_console_says_how_many_frames_of_k_max_and_why_it_stopped():
    out = io.StringIO()
    early = dataclasses.replace(prediction(2), selected=(33,), frames_used=1, exit="confident", k_max=8)
    full = dataclasses.replace(prediction(3), frames_used=4, exit="k_max", k_max=4)
    budget = dataclasses.replace(prediction(4), selected=(65, 70), frames_used=2, exit="budget", k_max=8)
    async with ConsoleSink(out, show_stats=False) as sink:
        for p in (early, full, budget):
            await sink.publish_prediction(p)
    assert [line.split(" | ")[1] for line in out.getvalue().splitlines()] == [
        "picked 1 of 8 (confident)",
        "picked 4 of 4",
        "picked 2 of 8 (budget)",
    ]
