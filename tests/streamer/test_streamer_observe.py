"""The observer in-process: Prometheus /metrics scraped during a real run and checked against the
final stats, /healthz 200/503 (no frame yet, running, stalled, ended, broker down), the address
flag, and the view state's bounds."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from streamer_help import ListSink, stats
from waiting import until

from core.errors import ConfigError
from sinks.messages import Prediction
from sinks.mqtt import MqttSettings, MqttSink
from sources.frame import Frame
from sources.synthetic import SyntheticSource
from streamer.observe import Observer, parse_address
from streamer.observe.view import MAX_HISTORY
from streamer.pipeline import Pipeline, PipelineSettings

T, K = 8, 4


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    async with session.get(url + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def frames(m: dict, stream: str, outcome: str) -> float:
    if outcome == "in":
        return m.get(("das_stream_frames_received_total", (("stream", stream),)), 0.0)
    return m.get(("das_stream_frames_total", (("outcome", outcome), ("stream", stream))), 0.0)


async def health(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url + "/healthz") as r:
        return r.status, await r.text()


async def test_metrics_during_a_run_match_the_final_stats(engine):
    engine.stage_listeners.clear()
    sources = [
        SyntheticSource(name=f"s{i}", fps=150, size=32, frames=300 + 40 * i, seed=i, clip_frames=16) for i in range(2)
    ]
    sink = ListSink()
    observer = Observer(streams=["s0", "s1"], sinks=[sink], metrics="127.0.0.1:0")
    observer.attach_engine(engine)
    pipe = Pipeline(
        sources=[(s, "drop_oldest") for s in sources],
        engine=engine,
        sinks=[sink],
        settings=PipelineSettings(stride=4, frame_queue=64),
        observers=[observer],
    )
    async with observer, aiohttp.ClientSession() as session:
        url = observer.urls["metrics"]
        status, text = await health(session, url)
        assert (
            status == 503 and "stream s0 starting: no frame yet" in text and "stream s1 starting: no frame yet" in text
        )

        run = asyncio.create_task(pipe.run())
        scrapes, statuses = [], []
        while not run.done():
            scrapes.append(await scrape(session, url))
            statuses.append((await health(session, url))[0])
            await asyncio.sleep(0.25)  # the sampling interval of the scrapes, not a synchronisation
        summary = await run
        assert 200 in statuses  # both streams delivering and no sink to wait for

        # during the run: every scrape accounts for every frame, and counters never go down
        seen = [m for m in scrapes if frames(m, "s0", "in") > 0]
        assert len(seen) >= 2, "the run was too short to scrape it while frames were flowing"
        for stream in ("s0", "s1"):
            prev = {}
            for m in seen:
                pending = m.get(("das_stream_frames_pending", (("stream", stream),)), 0.0)
                values = {o: frames(m, stream, o) for o in ("in", "forwarded", "skipped", "dropped")}
                assert values["in"] == values["forwarded"] + values["skipped"] + values["dropped"] + pending
                assert all(values[o] >= prev.get(o, 0) for o in values)
                prev = values

        # after the run: exactly the final stats
        final_m = await scrape(session, url)
        for stream, final in summary.final.items():
            assert frames(final_m, stream, "in") == final.frames_in == 300 + 40 * int(stream[1])
            assert frames(final_m, stream, "forwarded") == final.frames_forwarded > 0
            assert frames(final_m, stream, "skipped") == final.frames_skipped > 0
            assert frames(final_m, stream, "dropped") == final.frames_dropped
            labels = (("stream", stream),)
            windows = sum(final_m[("das_stream_windows_total", (("closed", c), *labels))] for c in ("full", "flushed"))
            assert windows == final.windows > 0
            assert final_m[("das_stream_bad_messages_total", labels)] == final.bad_messages == 0
            embedded = final.extra["frames_embedded"]
            assert final_m[("das_stream_frames_embedded_total", labels)] == embedded == final.frames_forwarded
            # every published prediction was observed once in each latency histogram
            published = sum(1 for p in sink.predictions if p.stream == stream)
            assert published == final.windows
            flushed = final.extra["windows_flushed"]  # the last window, padded: reported apart
            assert final_m[("das_stream_capture_to_publish_seconds_count", labels)] == published - flushed
            assert final_m[("das_stream_close_to_publish_seconds_count", labels)] == published - flushed
            assert final_m.get(("das_stream_flushed_capture_to_publish_seconds_count", labels), 0) == flushed
            by_label = sum(
                v
                for (name, lab), v in final_m.items()
                if name == "das_stream_predictions_total" and dict(lab)["stream"] == stream
            )
            assert by_label == published
            mine = [p for p in sink.predictions if p.stream == stream]
            exits = sum(
                v
                for (name, lab), v in final_m.items()
                if name == "das_stream_window_exits_total" and dict(lab)["stream"] == stream
            )
            assert exits == published
            assert final_m[("das_stream_frames_used_count", labels)] == published
            assert final_m[("das_stream_frames_used_sum", labels)] == sum(p.frames_used for p in mine) > 0
            assert final_m[("das_stream_k_max", labels)] == K
            inf = final_m[("das_stream_close_to_publish_seconds_bucket", (("le", "+Inf"), ("stream", stream)))]
            assert inf == published - flushed
        for stage in ("sampler", "embed", "head"):
            assert final_m[("das_stream_engine_stage_seconds_count", (("stage", stage),))] >= 1
        status, text = await health(session, url)
        assert status == 503 and "stream s0 ended" in text
    engine.stage_listeners.clear()


async def test_two_observers_do_not_collide_on_metric_names():
    a, b = Observer(streams=["x"]), Observer(streams=["x"])
    a.on_stats(stats("x", frames_in=10))
    b.on_stats(stats("x", frames_in=20))
    from prometheus_client import generate_latest

    assert b'das_stream_frames_received_total{stream="x"} 10.0' in generate_latest(a.metrics.registry)
    assert b'das_stream_frames_received_total{stream="x"} 20.0' in generate_latest(b.metrics.registry)


async def test_healthz_reports_a_stalled_stream_and_an_ended_one():
    now = [100.0]  # the observer's clock, moved by the test
    observer = Observer(streams=["a", "b"], metrics="127.0.0.1:0", stall_s=0.3, clock=lambda: now[0])
    img = np.zeros((8, 8), np.uint8)
    async with observer, aiohttp.ClientSession() as session:
        url = observer.urls["metrics"]
        observer.on_frame("a", Frame("a", 0, time.time(), img))
        status, text = await health(session, url)
        assert status == 503 and "stream b starting: no frame yet" in text and "stream a" not in text
        observer.on_frame("b", Frame("b", 0, time.time(), img))
        now[0] += 0.3  # at the limit: not stalled yet
        assert await health(session, url) == (200, "ok\n")
        now[0] += 0.1
        observer.on_frame("b", Frame("b", 1, time.time(), img))
        status, text = await health(session, url)
        assert status == 503 and "stream a stalled: no frame for 0.4 s" in text and "stream b" not in text
        m = await scrape(session, url)
        assert m[("das_stream_state", (("state", "stalled"), ("stream", "a")))] == 1.0
        assert m[("das_stream_state", (("state", "running"), ("stream", "b")))] == 1.0
        observer.on_frame("a", Frame("a", 1, time.time(), img))
        observer.on_stats(stats("b", final=True, extra={"error": "video clip.mp4 is truncated"}))
        status, text = await health(session, url)
        assert status == 503 and text == "unhealthy: stream b failed: video clip.mp4 is truncated\n"


async def test_healthz_503_while_the_broker_is_down_and_200_again_after(engine, mqtt_broker):
    settings = MqttSettings.from_url(mqtt_broker.url, topic_prefix="obs", client_id="obs-health", reconnect_max=0.3)
    sink = MqttSink(settings)
    source = SyntheticSource(name="live", fps=60, size=32, clip_frames=16)  # endless, paced
    observer = Observer(streams=["live"], sinks=[sink], metrics="127.0.0.1:0")
    pipe = Pipeline(
        sources=[(source, "drop_oldest")],
        engine=engine,
        sinks=[sink],
        settings=PipelineSettings(stride=T),
        observers=[observer],
    )

    async def wait_status(session, url, code):
        async def reached():
            status, text = await health(session, url)
            return text if status == code else None

        return await until(reached, f"/healthz {code}")

    async with observer, aiohttp.ClientSession() as session:
        url = observer.urls["metrics"]
        run = asyncio.create_task(pipe.run())
        try:
            await wait_status(session, url, 200)
            m = await scrape(session, url)
            assert m[("das_stream_mqtt_connected", (("broker", settings.url),))] == 1.0
            await asyncio.to_thread(mqtt_broker.stop)
            text = await wait_status(session, url, 503)
            assert f"sink {settings.url} not connected" in text
            m = await scrape(session, url)
            assert m[("das_stream_mqtt_connected", (("broker", settings.url),))] == 0.0
            await asyncio.to_thread(mqtt_broker.start)
            await wait_status(session, url, 200)
            published = ("das_stream_mqtt_published_total", (("broker", settings.url),))

            async def delivered():  # healthy again at the reconnect; deliveries follow
                m = await scrape(session, url)
                return m if m[published] >= 1 else None

            m = await until(delivered, "a prediction delivered after the outage")
            assert m[("das_stream_mqtt_reconnects_total", (("broker", settings.url),))] >= 1
        finally:
            pipe.stop()
            await run


async def test_observer_port_in_use_is_a_one_line_error():
    first = Observer(metrics="127.0.0.1:0")
    async with first:
        port = int(first.urls["metrics"].rsplit(":", 1)[1])
        with pytest.raises(ConfigError, match=rf"cannot serve metrics on 127.0.0.1:{port}: .*--metrics HOST:PORT"):
            await Observer(metrics=f"127.0.0.1:{port}").start()


async def test_web_and_metrics_on_one_address_share_one_server():
    probe = Observer(web="127.0.0.1:0")
    async with probe:  # find a free port, then reuse it for both roles
        port = int(probe.urls["web"].rsplit(":", 1)[1])
    both = Observer(web=f"127.0.0.1:{port}", metrics=f"127.0.0.1:{port}")
    async with both, aiohttp.ClientSession() as session:
        assert both.urls["web"] == both.urls["metrics"]
        for path, kind in (("/", "text/html"), ("/metrics", "text/plain"), ("/static/app.js", "javascript")):
            async with session.get(both.urls["web"] + path) as r:
                assert r.status == 200 and kind in r.headers["Content-Type"]


@pytest.mark.parametrize(
    "text, host, port, loopback",
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080, True),
        ("9000", "127.0.0.1", 9000, True),
        ("[::1]:9108", "::1", 9108, True),
        ("::1", "::1", 9108, True),
        ("localhost", "localhost", 9108, True),
        ("0.0.0.0:80", "0.0.0.0", 80, False),
        ("10.1.2.3:9108", "10.1.2.3", 9108, False),
    ],
)
def test_address_forms(text, host, port, loopback):
    a = parse_address(text, flag="--metrics", default_port=9108)
    assert (a.host, a.port, a.loopback) == (host, port, loopback)


@pytest.mark.parametrize("text", ["127.0.0.1:http", ":8080", "127.0.0.1:70000", "[::1:80", "[zz::1]:80", ""])
def test_bad_address_names_the_flag_and_the_form(text):
    with pytest.raises(ConfigError, match=r"^--web .*give HOST:PORT, e.g. --web 127.0.0.1:8080$"):
        parse_address(text, flag="--web", default_port=8080)


def test_offered_items_keep_references_only_and_history_is_bounded():
    observer = Observer(streams=["s"])
    img = np.full((64, 64), 7, np.uint8)
    frames_in = [Frame("s", i, time.time(), img) for i in range(T)]
    for f in frames_in:
        observer.on_frame("s", f)
    view = observer.view.streams["s"]
    assert view.latest is frames_in[-1] and view.frames_seen == T and view.live == {}  # nothing encoded yet

    class Result:  # the two attributes the observer reads from a WindowResult
        def __init__(self, window, selected):
            self.window, self.selected = window, selected

    from streamer.window import Window

    w = Window(stream="s", index=0, num_frames=T, frames=tuple(frames_in), retire=(), t_close=time.time())
    for i in range(MAX_HISTORY + 10):
        pred = Prediction(
            stream="s",
            window=i,
            first_seq=0,
            last_seq=T - 1,
            t_first=0.0,
            t_last=time.time(),
            selected=(1, 3),
            probs={"a": 0.25, "b": 0.75},
            label="b",
            model="m",
            latency_ms=1.0,
        )
        observer.on_window(Result(w, (1, 3)), pred)
    assert len(view.history) == MAX_HISTORY
    state = observer.view.state()
    assert state["streams"]["s"]["window"]["selected"] == [1, 3]
    assert state["class_names"] == ["a", "b"]
    thumbs = observer.view.thumbnails(view.window)
    assert len(thumbs) == T and all(t.startswith("data:image/jpeg;base64,") for t in thumbs)


def test_a_broken_item_is_logged_once_and_never_raises(caplog):
    observer = Observer(streams=["s"])
    for _ in range(3):
        observer.on_window(object(), None)  # not a WindowResult: the pipeline must go on
    assert sum("on_window failed" in r.getMessage() for r in caplog.records) == 1


def test_web_and_metrics_flags_default_to_loopback_and_reach_the_config():
    from das_stream.cli import build_parser
    from streamer.config import RunConfig

    args = build_parser().parse_args(["run", "--web", "--metrics", "0.0.0.0:9200"])
    assert (args.web, args.metrics) == ("127.0.0.1:8080", "0.0.0.0:9200")
    assert build_parser().parse_args(["run"]).web is None  # off unless asked for
    cfg = RunConfig.load(None, {"web": args.web, "metrics": args.metrics})
    assert (cfg.web, cfg.metrics) == ("127.0.0.1:8080", "0.0.0.0:9200")


def test_bad_web_address_is_a_one_line_cli_error(capsys):
    from das_stream.cli import main

    assert main(["run", "--web", "127.0.0.1:http", "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "das-stream: error: --web '127.0.0.1:http': port 'http' is not a number from 0 to 65535; "
        "give HOST:PORT, e.g. --web 127.0.0.1:8080"
    )


def test_live_image_is_encoded_at_most_live_fps_times_a_second_whatever_the_requests():
    observer = Observer(streams=["s"], live_fps=4.0)
    rng = np.random.default_rng(0)
    encodes = 0
    t = 0.0
    for seq in range(300):  # 300 frames and 300 requests over 3 s of (simulated) time
        observer.on_frame("s", Frame("s", seq, 0.0, rng.integers(0, 255, (32, 32), dtype=np.uint8)))
        jpeg, todo = observer.view.live_jpeg("s", t)
        if todo is not None:
            encodes += 1
            observer.view.store_live("s", todo, b"jpeg", t)
        t += 0.01
    assert encodes == 12  # one at t=0, then every 0.25 s


def test_a_non_loopback_address_logs_one_warning_line(caplog):
    Observer(web="0.0.0.0:8080", metrics="127.0.0.1:9108")  # not started: nothing binds
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "--web 0.0.0.0:8080 is reachable from other machines and has no authentication; use 127.0.0.1 to keep it local"
    ]


def test_the_mqtt_sinks_refused_and_failed_messages_are_exported():
    from prometheus_client import generate_latest

    from streamer.observe.metrics import Metrics

    sink = MqttSink(MqttSettings.from_url("mqtt://127.0.0.1:1"))  # never started: its counters at 0
    text = generate_latest(Metrics(sinks=[sink]).registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("published", "overflow", "refused", "failed", "reconnects"):
        (sample,) = families[f"das_stream_mqtt_{name}"].samples
        assert sample.value == sink.counters.get(name, 0) == 0
