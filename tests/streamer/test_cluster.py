"""`das-stream cluster` on a real local Ray (one instance for the module) and a real Mosquitto.

Marked ``cluster``: ``pytest -m "not cluster"`` skips them; CI runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time

import aiomqtt
import pytest
from streamer_help import make_model_file
from waiting import until

from core.errors import ConfigError
from das_stream.cli import main
from sampler.model import SampledClassifier
from sources.spec import parse_source
from streamer.cluster.config import ClusterConfig
from streamer.inference import InferenceEngine
from streamer.pipeline import Pipeline, PipelineSettings

ray = pytest.importorskip("ray")  # a declared dev dependency; CI installs it

STRIDE = 4


@pytest.fixture(scope="module")
def ray_instance():
    from ray import serve

    from streamer.cluster.serve import NAMESPACE

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        namespace=NAMESPACE,
        logging_level="WARNING",
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    yield
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return make_model_file(
        tmp_path_factory.mktemp("model") / "ward.pt", num_frames=8, k=4, input_size=32, feature_size=16
    )


class Subscriber:
    """Records every prediction and stats payload under ``das/#`` with its arrival time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.predictions: list[tuple[float, dict]] = []
        self.stats: list[dict] = []

    async def __aenter__(self):
        self.client = aiomqtt.Client(
            "127.0.0.1", self.port, identifier=f"test-cluster-{os.getpid()}", clean_session=True
        )
        await self.client.__aenter__()
        await self.client.subscribe("das/#", qos=1)
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self):
        async for msg in self.client.messages:
            data = json.loads(msg.payload)
            if data["type"] == "prediction":
                self.predictions.append((time.time(), data))
            else:
                self.stats.append(data)

    async def __aexit__(self, *exc):
        self.task.cancel()
        await self.client.__aexit__(None, None, None)

    def final(self, stream: str) -> dict:
        return [s for s in self.stats if s["stream"] == stream and s["final"]][-1]

    def by_window(self, stream: str) -> dict[int, dict]:
        out: dict[int, dict] = {}
        for _, p in self.predictions:
            if p["stream"] == stream:
                assert out.setdefault(p["window"], p) == p, "two different predictions for one window"
        return out

    async def until(self, predicate, timeout: float) -> None:
        await until(predicate, "the predictions and stats expected", timeout=timeout)


def config(model_file, broker, sources, **kw) -> ClusterConfig:
    base = dict(
        sources=tuple(sources),
        model=str(model_file),
        stride=STRIDE,
        replicas=2,
        replica_cpus=0.5,
        stream_cpus=0.25,
        mqtt=broker.url,
        stats_interval=1.0,
        report_interval=0.0,
        batch_wait_ms=5.0,
        max_batch_frames=16,
        request_timeout=20.0,
    )
    base.update(kw)
    return ClusterConfig(**base)


def start(cfg: ClusterConfig):
    from streamer.cluster.driver import Cluster

    cluster = Cluster(cfg, reuse_pool=True)  # the module shares one embedder pool
    cluster.start()
    return cluster


async def single_process(model_file, specs, **options) -> dict[tuple[str, int], object]:
    """What `das-stream run` gives on the same frames: predictions by (stream, window)."""
    engine = InferenceEngine(SampledClassifier.load(model_file), device="cpu")

    class Sink:
        def __init__(self):
            self.predictions = []

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return None

        async def publish_prediction(self, p):
            self.predictions.append(p)

        async def publish_stats(self, s):
            return None

    sink = Sink()
    names = [f"s{i}" for i in range(len(specs))]
    sources = [(parse_source(spec, name=n, size=32, **options), "block") for spec, n in zip(specs, names)]
    try:
        await Pipeline(sources=sources, engine=engine, sinks=[sink], settings=PipelineSettings(stride=STRIDE)).run()
    finally:
        engine.close()
    return {(p.stream, p.window): p for p in sink.predictions}


def test_bad_cluster_configs_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # the CLI's basicConfig must not keep capsys' stream
    bad = {"unknown.yaml": "sources: [synthetic:]\nreplica: 2\n", "empty.yaml": "sources: []\nreplicas: 2\n"}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts TCP connections, never speaks: a Ray address that does not answer
    try:
        cases = [
            (["cluster", "--config", str(tmp_path / "unknown.yaml")], "unknown key 'replica'"),
            (["cluster", "--config", str(tmp_path / "empty.yaml")], "no sources"),
            (
                [
                    "cluster",
                    "--source",
                    "synthetic:",
                    "--address",
                    f"127.0.0.1:{silent.getsockname()[1]}",
                    "--connect-timeout",
                    "1",
                ],
                "did not answer within 1 s",
            ),
        ]
        for argv, needle in cases:  # the silent address fails after its 1 s, not at pytest's timeout
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert needle in err and err.count("\n") == 1 and err.startswith("das-stream: error: ")
    finally:
        silent.close()
    ward = ClusterConfig.load("configs/ward.yaml")  # the shipped example validates
    assert len(ward.sources) == 3 and ward.replicas == 2 and ward.policy == "drop_oldest"
    with pytest.raises(ConfigError, match="max_batch_frames"):
        ClusterConfig(sources=("synthetic:",), max_batch_frames=0)


@pytest.mark.cluster
async def test_three_streams_two_replicas_match_single_process(ray_instance, model_file, mqtt_broker):
    specs = [f"synthetic:?frames={60 + 8 * i}&seed={i}&clip_frames=16" for i in range(3)]
    expected = await single_process(model_file, specs, pacing=False)
    cfg = config(model_file, mqtt_broker, specs, pacing=False)
    async with Subscriber(mqtt_broker.port) as sub:
        cluster = await asyncio.to_thread(start, cfg)
        try:
            assert await asyncio.to_thread(cluster.wait, 240)
            names = cluster.names
            await sub.until(lambda: all(any(s["stream"] == n and s["final"] for s in sub.stats) for n in names), 30)
            replicas = set(cluster.snapshot()["replicas"])
        finally:
            await asyncio.to_thread(cluster.close)
    assert names == ["synthetic", "synthetic-1", "synthetic-2"]
    served = set()
    for i, name in enumerate(names):
        got = sub.by_window(name)
        want = {w: p for (s, w), p in expected.items() if s == f"s{i}"}
        assert sorted(got) == sorted(want) and len(want) >= 14  # every window arrived, none extra
        for w, p in got.items():
            assert tuple(p["selected"]) == want[w].selected
            assert p["probs"].keys() == want[w].probs.keys()
            assert all(abs(p["probs"][c] - want[w].probs[c]) <= 1e-4 for c in p["probs"])
            assert p["rtt_ms"] > 0 and p["retries"] == 0 and p["model"] == want[w].model
            if p["replica"]:
                served.update(p["replica"].split(","))
        final = sub.final(name)
        assert final["frames_in"] == 60 + 8 * i and final["frames_dropped"] == 0 and final["frames_pending"] == 0
        assert final["frames_in"] == final["frames_forwarded"] + final["frames_skipped"]
        assert final["windows"] == len(want)
    assert served == replicas and len(replicas) == 2  # both replicas took windows from the three streams


@pytest.mark.cluster
async def test_replica_killed_mid_run_retries_and_loses_nothing(ray_instance, model_file, mqtt_broker):
    specs = [f"synthetic:?frames=400&seed={i}&clip_frames=16" for i in range(2)]
    cfg = config(model_file, mqtt_broker, specs, pacing=False, max_batch_windows=1)
    async with Subscriber(mqtt_broker.port) as sub:
        cluster = await asyncio.to_thread(start, cfg)
        try:
            await sub.until(lambda: len(sub.predictions) >= 10, 120)
            # Kill replicas while they hold requests until a retry shows (one kill normally does). The state
            # actor keeps a dead replica's last report, so victims are picked among pids not yet killed;
            # after a kill, wait for a retry or for a replacement replica to report, then kill again.
            killed: set[int] = set()  # pids: a replacement replica reports under a new id and pid

            def retried(snap) -> bool:
                return sum(e.get("ckpt", {}).get("retries", 0) for e in snap["streams"].values()) > 0

            def pids(snap) -> set[int]:
                return {f["pid"] for f in snap["replicas"].values()}

            async def snapshot_where(accept, what: str):
                async def poll():
                    snap = await asyncio.to_thread(cluster.snapshot)
                    return snap if accept(snap) else None

                return await until(poll, what, timeout=120, poll=0.2)

            snap = await snapshot_where(lambda s: retried(s) or pids(s), "a replica's report")
            while not retried(snap):
                assert len(killed) < 6, f"no retry after killing {len(killed)} replicas"
                alive = [f for f in snap["replicas"].values() if f["pid"] not in killed]
                victim = max(alive, key=lambda f: f["in_flight"])  # a busy one when there is one
                known = pids(snap)
                killed.add(victim["pid"])
                with contextlib.suppress(ProcessLookupError):  # one that died before: its last report stays
                    os.kill(victim["pid"], signal.SIGKILL)
                snap = await snapshot_where(
                    lambda s, known=known: retried(s) or bool(pids(s) - known - killed),
                    "a retry, or a replacement replica reporting",
                )
            assert await asyncio.to_thread(cluster.wait, 240)
            await sub.until(
                lambda: all(any(s["stream"] == n and s["final"] for s in sub.stats) for n in cluster.names), 30
            )
        finally:
            await asyncio.to_thread(cluster.close)
    total_retries = 0
    for name in cluster.names:
        final = sub.final(name)
        windows = sub.by_window(name)
        assert final["frames_in"] == 400 and final["frames_dropped"] == 0 and final["frames_pending"] == 0
        assert sorted(windows) == list(range(final["windows"])) and final["windows"] == 400 // STRIDE - 1
        total_retries += final["extra"]["retries"]
        assert sum(p["retries"] for p in windows.values()) == final["extra"]["retries"]
    assert total_retries >= 1


@pytest.mark.cluster
async def test_stream_actor_killed_restarts_and_reports_the_gap(ray_instance, model_file, mqtt_broker):
    specs = [f"synthetic:?fps=60&seed={i}&clip_frames=16" for i in range(2)]
    cfg = config(model_file, mqtt_broker, specs)
    async with Subscriber(mqtt_broker.port) as sub:
        cluster = await asyncio.to_thread(start, cfg)
        try:
            victim, other = cluster.names
            await sub.until(lambda: len(sub.by_window(victim)) >= 5 and len(sub.by_window(other)) >= 5, 120)
            pid = (await asyncio.to_thread(cluster.snapshot))["streams"][victim]["pid"]
            t_kill = time.time()
            os.kill(pid, signal.SIGKILL)
            before = max(sub.by_window(victim))
            await sub.until(lambda: max(sub.by_window(victim)) > before + 3, 180)
            t_back = min(t for t, p in sub.predictions if p["stream"] == victim and p["window"] > before)
            print(f"stream actor killed -> next prediction: {t_back - t_kill:.1f} s")  # docs/scale-out.md
            await asyncio.to_thread(cluster.stop)
            assert await asyncio.to_thread(cluster.wait, 60)
            await sub.until(
                lambda: all(any(s["stream"] == n and s["final"] for s in sub.stats) for n in cluster.names), 30
            )
        finally:
            await asyncio.to_thread(cluster.close)
    final = sub.final(victim)
    assert final["extra"]["restarts"] == 1 and final["extra"]["gap_s"] > 0
    assert final["frames_in"] == final["frames_forwarded"] + final["frames_skipped"] + final["frames_dropped"]
    assert final["frames_dropped"] >= final["extra"]["lost_in_restart"]
    windows = sorted(sub.by_window(victim))
    assert len(set(windows)) == len(windows) and windows[-1] > before  # numbering goes on, never reused
    # The other stream never stopped: its predictions kept arriving while the victim was down.
    assert any(t_kill < t < t_back for t, p in sub.predictions if p["stream"] == other)
    assert "restarts" not in sub.final(other)["extra"]
