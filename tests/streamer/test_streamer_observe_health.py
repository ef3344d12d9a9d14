"""Metrics by the book and honest health: counters that partition, a recent input rate, no
``_created`` series, latency of flushed windows apart, stream states (running / stalled /
reconnecting / ended / failed) in /metrics and per stream on /healthz/STREAM, a reconnect counted
once per recovery, /healthz back soon after the broker, counters fresh with every window, and idle
or slow HTTP connections closed."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import aiohttp
import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from streamer_help import ListSink, stats
from waiting import until

from sinks.messages import Prediction, Stats
from sinks.mqtt import MqttSettings, MqttSink
from sources.base import Source
from sources.frame import Frame
from sources.probe import ProbeSource, _FeedLost
from sources.synthetic import SyntheticSource
from streamer.observe import Observer
from streamer.observe.metrics import OUTCOMES, STATES
from streamer.pipeline import Pipeline, PipelineSettings
from streamer.stats import RECENT_S, StreamStats

T, K = 8, 4
IMG = np.zeros((8, 8), np.uint8)


def samples(observer: Observer) -> dict[tuple[str, tuple], float]:
    """The observer's registry as {(sample name, sorted labels): value}."""
    text = generate_latest(observer.metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as r:
        return r.status, await r.text()


# --- counters -----------------------------------------------------------------------------------


def test_frame_outcomes_partition_the_frames_received():
    observer = Observer(streams=["s"])
    observer.on_stats(stats("s"))
    m = samples(observer)
    outcomes = {dict(lab)["outcome"]: v for (name, lab), v in m.items() if name == "das_stream_frames_total"}
    assert set(outcomes) == set(OUTCOMES)  # no "in" beside its own parts: sum() counts each frame once
    assert outcomes["resampled_out"] == 20  # resampled frames are a part too
    received = m[("das_stream_frames_received_total", (("stream", "s"),))]
    assert sum(outcomes.values()) + m[("das_stream_frames_pending", (("stream", "s"),))] == received == 100


def test_no_created_series():
    observer = Observer(streams=["s"])
    observer.on_stats(stats("s"))
    observer.metrics.on_stage("embed", 0.01)
    observer.metrics.on_prediction(prediction("s", 0), t_close=time.time())
    text = generate_latest(observer.metrics.registry).decode()
    assert "das_stream_predictions_total" in text and "das_stream_engine_stage_seconds_count" in text
    assert "_created" not in text


def test_input_fps_is_the_rate_of_the_last_seconds_and_zero_once_stalled():
    clock = [1000.0]
    st = StreamStats(stream="s", num_frames=T, clock=lambda: clock[0])
    for _ in range(300):  # 10 s at 30 fps
        st.frame_in()
        clock[0] += 1 / 30
    assert st.snapshot().extra["fps_recent"] == pytest.approx(30.0, rel=0.02)
    clock[0] += RECENT_S + 1.0  # then nothing
    s = st.snapshot()
    assert s.extra["fps_recent"] == 0.0 and s.fps_in == pytest.approx(30.0, rel=0.02)  # fps_in: the whole run
    observer = Observer(streams=["s"])
    observer.on_stats(s)
    assert samples(observer)[("das_stream_input_fps", (("stream", "s"),))] == 0.0


def test_source_reconnects_missed_frames_and_pauses_are_exported():
    observer = Observer(streams=["p"])
    extra = {"reconnects": 2, "gaps": 2, "gap_frames": 31, "gaps_closed": 3, "windows_flushed": 4}
    observer.on_stats(stats("p", extra=extra))
    m = samples(observer)
    label = (("stream", "p"),)
    assert m[("das_stream_source_reconnects_total", label)] == 2
    assert m[("das_stream_source_missed_frames_total", label)] == 31
    assert m[("das_stream_pauses_total", label)] == 3
    assert m[("das_stream_bad_messages_total", label)] == 2
    assert m[("das_stream_windows_total", (("closed", "flushed"), ("stream", "p")))] == 4
    assert m[("das_stream_windows_total", (("closed", "full"), ("stream", "p")))] == 2


# --- latency of flushed windows -----------------------------------------------------------------


def prediction(stream: str, window: int, *, padded: int = 0, t_last: float | None = None) -> Prediction:
    return Prediction(
        stream=stream,
        window=window,
        first_seq=0,
        last_seq=T - 1,
        t_first=0.0,
        t_last=time.time() if t_last is None else t_last,
        selected=(1, 3),
        probs={"a": 0.25, "b": 0.75},
        label="b",
        model="m",
        latency_ms=1.0,
        padded=padded,
    )


class PausingSource(Source):
    """A live-like source on the real Source machinery: ``before`` frames, a ``pause``, ``after``
    frames, each stamped as it is produced."""

    def __init__(self, *, before: int, after: int, pause: float, fps: float = 60.0) -> None:
        super().__init__(name="paused")
        self.before, self.after, self.pause, self.fps = before, after, pause, fps

    def _produce(self, stop: threading.Event):
        rng = np.random.default_rng(0)
        for seq in range(self.before + self.after):
            if stop.is_set():
                return
            if seq == self.before:
                stop.wait(self.pause)
            stop.wait(1.0 / self.fps)
            yield self._frame(seq, rng.integers(0, 255, (32, 32), dtype=np.uint8), time.time())


async def test_a_window_flushed_by_a_pause_is_reported_apart_from_the_pipeline_latency(engine):
    # T = stride = 8: window 0-7 full, 8-11 open at the pause (flushed after `gap`), then 12-19 and 20-27 full
    gap = 0.5
    source = PausingSource(before=12, after=16, pause=3 * gap)
    sink = ListSink()
    observer = Observer(streams=["paused"])
    pipe = Pipeline(
        sources=[(source, "drop_oldest")],
        engine=engine,
        sinks=[sink],
        settings=PipelineSettings(stride=T, gap=gap, stats_interval=3600),
        observers=[observer],
    )
    summary = await pipe.run()
    flushed = [p for p in sink.predictions if p.padded]
    full = [p for p in sink.predictions if not p.padded]
    assert len(flushed) == 1 and len(full) == 3
    final = summary.final["paused"]
    assert final.extra["windows_flushed"] == 1
    # the flushed window waited `gap` for the stream: its latency is reported, apart
    assert final.extra["latency_flushed_ms"]["p50"] >= gap * 1000.0
    m = samples(observer)
    label = (("stream", "paused"),)
    assert m[("das_stream_flushed_capture_to_publish_seconds_count", label)] == 1
    assert m[("das_stream_flushed_capture_to_publish_seconds_sum", label)] >= gap
    assert m[("das_stream_capture_to_publish_seconds_count", label)] == len(full)
    assert m[("das_stream_close_to_publish_seconds_count", label)] == len(full)
    assert len(pipe.streams[0].stats.latency_ms) == len(full)  # the p50/p95/p99 are of full windows


# --- states and /healthz ------------------------------------------------------------------------


async def test_each_stream_has_a_state_in_metrics_and_on_its_own_healthz():
    observer = Observer(streams=["run", "stall", "end", "fail", "new"], metrics="127.0.0.1:0", stall_s=0.3)
    async with observer, aiohttp.ClientSession() as session:
        url = observer.urls["metrics"]
        for name in ("stall", "end", "fail"):
            observer.on_frame(name, Frame(name, 0, time.time(), IMG))
        await until(lambda: observer.state("stall")[0] == "stalled", "a stall")
        observer.on_frame("run", Frame("run", 0, time.time(), IMG))
        observer.on_stream_end("end", None)
        observer.on_stream_end("fail", OSError("device unplugged"))

        assert await get(session, url + "/healthz/run") == (200, "running\n")
        status, text = await get(session, url + "/healthz/stall")
        assert status == 503 and text.startswith("stalled: no frame for ")
        assert await get(session, url + "/healthz/end") == (410, "ended\n")  # gone: not the same as stalled
        assert await get(session, url + "/healthz/fail") == (503, "failed: device unplugged\n")
        assert await get(session, url + "/healthz/new") == (503, "starting: no frame yet\n")
        status, text = await get(session, url + "/healthz/nope")
        assert status == 404 and "run, stall, end, fail, new" in text

        status, text = await get(session, url + "/healthz")
        assert status == 503
        assert "stream end ended" in text and "stream fail failed: device unplugged" in text
        assert "stream stall stalled: no frame for" in text and "stream run" not in text

        m = samples(observer)
        expect = {"run": "running", "stall": "stalled", "end": "ended", "fail": "failed", "new": "starting"}
        for name, state in expect.items():
            row = {s: m[("das_stream_state", (("state", s), ("stream", name)))] for s in STATES}
            assert row == {s: float(s == state) for s in STATES}, name


async def test_a_stream_that_ends_mid_run_is_ended_at_once_never_stalled(engine):
    short = SyntheticSource(name="short", fps=200, size=32, frames=40, clip_frames=16)
    live = SyntheticSource(name="live", fps=60, size=32, clip_frames=16)  # endless
    observer = Observer(streams=["short", "live"], stall_s=0.3)
    pipe = Pipeline(
        sources=[(short, "drop_oldest"), (live, "drop_oldest")],
        engine=engine,
        sinks=[ListSink()],
        settings=PipelineSettings(stride=T),
        observers=[observer],
    )
    run = asyncio.create_task(pipe.run())
    seen = []
    try:

        def ended():
            seen.append(observer.state("short")[0])
            return seen[-1] == "ended"

        await until(ended, "the short stream to end", poll=0.02)
        assert observer.state("live")[0] == "running"  # the run goes on
        assert "stalled" not in seen
    finally:
        pipe.stop()
        await run


class _ScriptedFeed:
    """One connection of a simulated device: ``frames`` frames (None: endless) at 200 fps, then lost;
    ``hold`` keeps a connection that has delivered nothing waiting before it is lost."""

    rate = 200.0

    def __init__(self, frames: int | None, hold: threading.Event | None) -> None:
        self.left, self.hold = frames, hold

    def read(self):
        if self.hold is not None:
            self.hold.wait(10)
        if self.left is not None:
            if self.left <= 0:
                raise _FeedLost("the device went away")
            self.left -= 1
        time.sleep(1 / self.rate)  # the device's own pace
        return np.full((16, 16), 9, np.uint8), time.time()

    def close(self) -> None:
        pass


class ScriptedProbe(ProbeSource):
    """ProbeSource's real reconnect loop on a simulated device: connection i delivers plan[i]
    frames, then the feed is lost (the last plan entry: for ever)."""

    def __init__(self, plan: list[int | None], hold: threading.Event) -> None:
        super().__init__(0, name="probe", reconnect_initial=0.01, reconnect_max=0.02, queue_size=256)
        self.plan, self.hold, self.connections = plan, hold, 0
        self._new_feed = self._next_feed

    def _next_feed(self) -> _ScriptedFeed:
        i, self.connections = self.connections, self.connections + 1
        return _ScriptedFeed(self.plan[min(i, len(self.plan) - 1)], self.hold if i == 1 else None)


async def test_a_reconnect_is_counted_once_per_recovery_and_shown_while_it_lasts():
    # lost after 5 frames; the next two connections die before any frame (a server's dying backlog)
    hold = threading.Event()
    source = ScriptedProbe([5, 0, 0, None], hold)
    observer = Observer(sources=[source])
    async with source:
        frames = aiter(source)
        for _ in range(5):
            observer.on_frame("probe", await anext(frames))
        await until(lambda: source.connections >= 2, "the second connection")
        assert observer.state("probe") == ("reconnecting", "the source lost its feed")
        assert observer.states() == {"probe": "reconnecting"}
        hold.set()
        while (frame := await anext(frames)).seq < 12:
            observer.on_frame("probe", frame)
        observer.on_frame("probe", frame)
    assert source.connections == 4
    assert source.counters["reconnects"] == 1 and source.counters["gaps"] == 1  # one recovery, one gap
    assert observer.state("probe")[0] == "running"


async def test_healthz_is_200_soon_after_the_broker_comes_back_from_a_long_outage(engine, mqtt_broker):
    outage_s = 8.0  # long enough for the reconnect backoff to reach its cap
    settings = MqttSettings.from_url(mqtt_broker.url, topic_prefix="obs", client_id="obs-recover")
    sink = MqttSink(settings)
    source = SyntheticSource(name="live", fps=30, size=32, clip_frames=16)
    observer = Observer(sources=[source], sinks=[sink], metrics="127.0.0.1:0")
    pipe = Pipeline(
        sources=[(source, "drop_oldest")],
        engine=engine,
        sinks=[sink],
        settings=PipelineSettings(stride=T),
        observers=[observer],
    )
    async with observer, aiohttp.ClientSession() as session:
        url = observer.urls["metrics"] + "/healthz"
        run = asyncio.create_task(pipe.run())
        try:
            await until(lambda: get_status(session, url, 200), "healthy")
            await asyncio.to_thread(mqtt_broker.stop)
            await until(lambda: get_status(session, url, 503), "unhealthy")
            await asyncio.sleep(outage_s)  # the outage itself, not a synchronisation
            await asyncio.to_thread(mqtt_broker.start)
            t0 = time.monotonic()
            await until(lambda: get_status(session, url, 200), "healthy again", timeout=30)
            back_s = time.monotonic() - t0
            assert back_s < 4.5, f"/healthz stayed 503 for {back_s:.1f} s after the broker came back"
            assert sink.counters["reconnects"] == 1
        finally:
            pipe.stop()
            await run


async def get_status(session: aiohttp.ClientSession, url: str, code: int) -> bool:
    return (await get(session, url))[0] == code


# --- the view's counters and the web server ---------------------------------------------------------


class Recorder:
    """An observer that records the order of what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []

    def on_frame(self, stream: str, frame: Frame) -> None:
        pass

    def on_window(self, result, prediction: Prediction) -> None:
        self.events.append(("window", prediction.stream, prediction.window))

    def on_stats(self, stats: Stats) -> None:
        self.events.append(("stats", stats.stream, stats.windows))

    def on_stream_end(self, stream: str, error: BaseException | None) -> None:
        pass


async def test_counters_come_with_every_window(engine):
    recorder = Recorder()
    source = SyntheticSource(name="s", fps=200, size=32, frames=160, clip_frames=16)
    pipe = Pipeline(
        sources=[(source, "block")],
        engine=engine,
        sinks=[ListSink()],
        settings=PipelineSettings(stride=T),
        observers=[recorder],
    )
    await pipe.run()
    events = recorder.events
    windows = [i for i, e in enumerate(events) if e[0] == "window"]
    assert len(windows) == 20
    for i in windows:  # right after each window: stats that count it
        kind, stream, count = events[i + 1]
        assert kind == "stats" and count >= events[i][2] + 1


async def test_idle_and_slow_http_connections_are_closed():
    observer = Observer(web="127.0.0.1:0", idle_timeout=0.5)
    async with observer:
        host, port = observer.urls["web"].removeprefix("http://").rsplit(":", 1)
        idle = socket.create_connection((host, int(port)))
        slow = socket.create_connection((host, int(port)))
        slow.sendall(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line

        def closed(sock: socket.socket) -> bool:
            sock.settimeout(10)
            try:
                return sock.recv(1024) == b""  # may first receive a 408
            except (ConnectionResetError, TimeoutError):
                return False

        def closed_after_reads(sock: socket.socket) -> bool:
            for _ in range(3):
                if closed(sock):
                    return True
            return False

        t0 = time.monotonic()
        results = await asyncio.gather(
            asyncio.to_thread(closed_after_reads, idle), asyncio.to_thread(closed_after_reads, slow)
        )
        assert results == [True, True] and time.monotonic() - t0 < 5
        async with aiohttp.ClientSession() as session:  # the server itself still answers
            assert (await get(session, observer.urls["web"] + "/api/state"))[0] == 200
        idle.close()
        slow.close()
