"""`das-stream cluster` on a real Ray cluster and a real Mosquitto.

The module's Ray is started as a ward's IT starts one: ``ray start --head --node-ip-address
127.0.0.1`` with Ray's token authentication; the test process joins it with the token, as the
driver does (``streamer.cluster.connect``). Failures are injected at named points
(``streamer.cluster.faults``), never by timed kills, so every run of a test takes the same path.

Marked ``cluster``: ``pytest -m "not cluster"`` skips them; CI runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from cluster_help import (
    RayHead,
    Subscriber,
    listening,
    make_ward_model,
    ray_auth,
    run_single_process,
    same_window,
    until,
)
from streamer_help import write_video
from waiting import until_sync

from core.errors import ConfigError
from das_stream.cli import main
from sinks.console import format_prediction
from sinks.subscribe import decode
from streamer.app import overload_policy
from streamer.cluster.config import ClusterConfig
from streamer.cluster.faults import Faults
from streamer.config import RunConfig

ray = pytest.importorskip("ray")  # a declared dev dependency; CI installs it
# Worker processes import torch and Serve starts replicas slowly on a loaded 2-core machine (a
# replica's start took 22-26 s at load average 8): the timeout only bounds a hang.
pytestmark = pytest.mark.timeout(600)

STRIDE = 4
FRAMES = 96  # at 30 fps, resampled to the model's 15: 48 frames, 11 windows of 8 at stride 4


@pytest.fixture(scope="module")
def ray_head():
    """The module's Ray cluster, joined by this process with the cluster's token."""
    from ray import serve

    from streamer.cluster import connect
    from streamer.cluster.serve import NAMESPACE

    head = RayHead(num_cpus=3).start()
    with pytest.MonkeyPatch.context() as mp, ray_auth(RAY_AUTH_TOKEN_PATH=str(head.token)):
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", ""))
        from ray._private import ray_constants

        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", ray_constants.ENABLE_RAY_CLUSTER)
        try:
            connect.join(head.address, timeout=30, namespace=NAMESPACE, log_to_driver=False)
            yield head
        finally:
            serve.shutdown()
            ray.shutdown()
            head.stop()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return make_ward_model(tmp_path_factory.mktemp("model") / "ward.pt")


def config(model_file, broker, sources, **kw) -> ClusterConfig:
    base = dict(
        sources=tuple(sources),
        model=str(model_file),
        stride=STRIDE,
        replicas=2,
        replica_cpus=0.5,
        stream_cpus=0.25,
        engine="torch",
        mqtt=broker.url,
        stats_interval=1.0,
        report_interval=0.0,
        batch_wait_ms=5.0,
        max_batch_frames=16,
        request_timeout=20.0,
        gap=0.0,  # a stall of this loaded machine must not close a window early in one path and not the other
    )
    base.update(kw)
    return ClusterConfig(**base)


def pool_ready(replicas: int, timeout: float = 240.0) -> None:
    """Wait until the module's embedder pool (if deployed) runs ``replicas`` replicas: a replica an
    earlier test made exit is replaced by Serve within seconds."""
    from ray import serve

    from streamer.cluster.serve import APP_NAME, DEPLOYMENT_NAME

    def ready() -> bool:
        apps = serve.status().applications
        if APP_NAME not in apps:  # not deployed yet: the next start deploys it
            return True
        states = apps[APP_NAME].deployments[DEPLOYMENT_NAME].replica_states
        return states.get("RUNNING", 0) == replicas and sum(states.values()) == replicas

    until_sync(ready, f"the embedder pool back to {replicas} replicas", timeout=timeout, poll=0.2)


def start(cfg: ClusterConfig, faults=None):
    from streamer.cluster.driver import Cluster

    pool_ready(cfg.replicas)
    cluster = Cluster(cfg, reuse_pool=True, faults=faults)  # the module shares one embedder pool
    cluster.start()
    return cluster


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:  # 127.0.0.1 only
        return reply.read().decode()


def test_bad_cluster_configs_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # the CLI's basicConfig must not keep capsys' stream
    bad = {
        "unknown.yaml": "sources: [synthetic:]\nreplica: 2\n",
        "empty.yaml": "sources: []\nreplicas: 2\n",
        "nan.yaml": "sources: ['synthetic:']\nrequest_timeout: .nan\n",
        "jsonl.yaml": "sources: ['synthetic:']\njsonl: out.jsonl\n",
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts TCP connections, never speaks: a Ray address that does not answer
    try:
        cases = [
            (["cluster", "--config", str(tmp_path / "unknown.yaml")], "unknown key 'replica'"),
            (["cluster", "--config", str(tmp_path / "empty.yaml")], "no source given"),
            (["cluster", "--config", str(tmp_path / "nan.yaml")], "request_timeout must be a number > 0"),
            (["cluster", "--config", str(tmp_path / "jsonl.yaml")], "jsonl is not available in a cluster run"),
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
            (["cluster", "--source", "synthetic:", "--address", "nohost"], "is not HOST:PORT"),
        ]
        for argv, needle in cases:  # the silent address fails after its 1 s, not at pytest's timeout
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert needle in err and err.count("\n") == 1 and err.startswith("das-stream: error: ")
    finally:
        silent.close()
    ward = ClusterConfig.load("configs/ward.yaml")  # the shipped example validates
    assert len(ward.sources) == 3 and ward.replicas == 2 and overload_policy(ward) == "shrink"  # as `run` decides it
    with pytest.raises(ConfigError, match="max_batch_frames"):
        ClusterConfig(sources=("synthetic:",), max_batch_frames=0)
    for key in ("speed", "stats_interval", "gap"):  # the checks of `run`, not copies of them
        with pytest.raises(ConfigError, match=key):
            ClusterConfig(**{key: math.nan})
    # One configuration: every key of `run` is a cluster key with the same default (console aside).
    run, cluster = RunConfig(), ClusterConfig()
    assert set(RunConfig.keys()) <= set(ClusterConfig.keys())
    assert {k for k in RunConfig.keys() if getattr(run, k) != getattr(cluster, k)} == {"console"}
    assert cluster.run_config() == dataclasses.replace(run, console=False)


@pytest.mark.cluster
async def test_cluster_publishes_what_run_publishes(ray_head, model_file, mqtt_broker):
    from streamer.cluster.driver import Cluster

    with pytest.raises(ConfigError, match="has no GPU") as err:  # not silently on the CPU
        Cluster(config(model_file, mqtt_broker, ["synthetic:"], replica_gpus=1)).start()
    assert "\n" not in str(err.value)
    specs = [f"synthetic:?frames={FRAMES + 8 * i}&seed={i}&clip_frames=16" for i in range(2)]  # 11-12 windows
    cfg = config(model_file, mqtt_broker, specs, pacing=False)
    expected = await run_single_process(cfg, "run", mqtt_broker)
    watched = dataclasses.replace(cfg, web="127.0.0.1:0", metrics="127.0.0.1:0")  # served by the driver
    async with Subscriber(mqtt_broker.port) as sub:
        cluster = await asyncio.to_thread(start, watched)
        try:
            assert await asyncio.to_thread(cluster.wait, 240)
            names = cluster.names
            await sub.until(lambda: sub.ended(*names), 30)
            snap = await asyncio.to_thread(cluster.snapshot)

            def state() -> dict:
                return json.loads(http_get(cluster.watch.urls["web"] + "/api/state"))

            await until(
                lambda: all((state()["streams"].get(n, {}).get("stats") or {}).get("final") for n in names),
                "the final stats of every stream on the driver's web view",
                30,
            )
            view = state()
            metrics = http_get(cluster.watch.urls["metrics"] + "/metrics")
        finally:
            await asyncio.to_thread(cluster.close)
    # One page and one registry for all streams, fed from the stream actors.
    assert sorted(view["streams"]) == names and all(view["streams"][n]["window"] for n in names)
    for name in names:
        counted = [  # das_stream_predictions_total{label="...",stream="..."} N
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("das_stream_predictions_total{") and f'stream="{name}"' in line
        ]
        assert sum(counted) == len(expected[name])
    assert names == ["synthetic", "synthetic-1"] == sorted(expected)
    served = set()
    for name in names:
        got, want = sub.by_window(name), expected[name]
        assert sorted(got) == sorted(want) and len(want) >= 11  # every window arrived, none extra
        for w, p in got.items():
            same_window(p, want[w])  # resampled to 15 fps and delivered at 48 px, as `run` does
            assert p["rtt_ms"] > 0 and not p["restarted"]
            if p["replica"]:
                served.update(p["replica"].split(","))
        final = sub.final(name)
        assert final["frames_resampled_out"] > 0 and final["frames_dropped"] == 0 and final["frames_pending"] == 0
        assert final["frames_in"] == final["frames_forwarded"] + final["frames_skipped"] + final["frames_resampled_out"]
        assert final["windows"] == len(want)
        assert sum(p["retries"] for p in got.values()) == final["extra"]["retries"]  # 0 unless a request failed
    assert served <= set(snap["replicas"]) and len(served) == 2  # both replicas took windows from the two streams
    assert {f["device"] for f in snap["replicas"].values()} == {"cpu"}  # the device really used
    assert all(e["node"] == "127.0.0.1" for e in snap["streams"].values())


@pytest.mark.cluster
async def test_replica_dies_mid_request_retries_and_loses_nothing(ray_head, model_file, mqtt_broker):
    specs = [f"synthetic:?frames={FRAMES}&seed={i}&clip_frames=16" for i in range(2)]
    cfg = config(model_file, mqtt_broker, specs, pacing=False, max_batch_windows=1)
    # The first stream's 5th embedding request tells the replica that receives it to exit at once.
    faults = {"synthetic": Faults(replica_exit_on_request=5)}
    async with Subscriber(mqtt_broker.port) as sub:
        cluster = await asyncio.to_thread(start, cfg, faults)
        try:
            assert await asyncio.to_thread(cluster.wait, 240)
            await sub.until(lambda: sub.ended(*cluster.names), 30)
        finally:
            await asyncio.to_thread(cluster.close)
    for name in cluster.names:
        final = sub.final(name)
        windows = sub.by_window(name)
        assert final["frames_in"] == FRAMES and final["frames_dropped"] == 0 and final["frames_pending"] == 0
        assert sorted(windows) == list(range(final["windows"]))
        # Per-window figures are the window's own: they add up to the stream's total.
        assert sum(p["retries"] for p in windows.values()) == final["extra"]["retries"]
    windows = sub.by_window("synthetic")
    retried = [w for w, p in windows.items() if p["retries"]]
    assert sub.final("synthetic")["extra"]["retries"] >= 1 and retried  # the window that held the 5th request
    assert all(windows[w]["replica"] for w in retried)  # answered by a live replica in the end


@pytest.mark.cluster
async def test_restarted_streams_resume_a_replay_and_reconnect_a_live_source(
    ray_head, model_file, mqtt_broker, tmp_path
):
    video = write_video(tmp_path / "replay.mp4", frames=FRAMES, fps=30, size=48)
    replay, live = "replay", "synthetic"
    specs = [f"video:{video}", "synthetic:?fps=60&seed=1&clip_frames=16"]
    cfg = config(model_file, mqtt_broker, specs, overload="block")  # paced, and no frame dropped under load
    expected = await run_single_process(config(model_file, mqtt_broker, specs[:1], pacing=False), "run", mqtt_broker)
    # Each victim's actor exits after checkpointing one window and before publishing it.
    faults = {replay: Faults(exit_after_checkpoint=4), live: Faults(exit_after_checkpoint=5)}
    async with Subscriber(mqtt_broker.port) as sub:
        cluster = await asyncio.to_thread(start, cfg, faults)
        try:
            assert cluster.names == [replay, live]
            await sub.until(lambda: sub.ended(replay) and max(sub.by_window(live), default=0) > 8, 240)
            await asyncio.to_thread(cluster.stop)
            assert await asyncio.to_thread(cluster.wait, 60)
            await sub.until(lambda: sub.ended(*cluster.names), 30)
        finally:
            await asyncio.to_thread(cluster.close)

    # The replay resumed at the checkpointed frame: every window but the lost one is the one `run`
    # publishes (same frames, picks and probabilities), and no frame was read or decided twice.
    got, want = sub.by_window(replay), expected[replay]
    shape = {w: (p["first_seq"], p["last_seq"], p["padded"], p["gap_before"]) for w, p in got.items()}
    assert sorted(got) == [w for w in sorted(want) if w != 4], shape
    for w, p in got.items():
        same_window(p, want[w])
    final = sub.final(replay)
    assert final["frames_in"] == FRAMES and final["frames_pending"] == 0 and final["extra"]["restarts"] == 1
    assert final["windows"] == len(want) and final["extra"]["lost_in_restart"] == 0
    counted = ("frames_forwarded", "frames_skipped", "frames_dropped", "frames_resampled_out")
    assert final["frames_in"] == sum(final[k] for k in counted)
    assert final["extra"]["MqttSink"]["published"] >= len(got)  # the sink's counters went on from the checkpoint

    # The first prediction after each restart says so, and `das-stream subscribe` prints it.
    for name, lost in ((replay, 4), (live, 5)):
        windows = sub.by_window(name)
        assert lost not in windows and set(range(lost)) <= set(windows)  # lost once, the number never reused
        first = windows[lost + 1]
        assert first["restarted"] and first["gap_before"] and first["gap_ms"] > 0
        assert not any(p["restarted"] or p["gap_before"] for w, p in windows.items() if w != lost + 1)
        topic, payload = next((t, m) for t, m in sub.raw if t == f"das/{name}/prediction" and b'"restarted":true' in m)
        assert f"after a restart of {first['gap_ms'] / 1000.0:.1f} s" in format_prediction(decode(topic, payload))

    # The live stream reconnected and numbered on; what its dead incarnation held is counted as lost.
    final = sub.final(live)
    assert final["extra"]["restarts"] == 1 and final["extra"]["gap_s"] > 0
    assert final["frames_in"] == sum(final[k] for k in counted) and final["frames_pending"] == 0
    assert final["frames_dropped"] >= final["extra"]["lost_in_restart"] > 0
    firsts = [p["first_seq"] for _, p in sorted(sub.by_window(live).items())]
    assert firsts == sorted(firsts)  # frame numbers go on after the restart
    t_down = max(t for t, p in sub.predictions if p["stream"] == live and p["window"] == 4)
    t_back = min(t for t, p in sub.predictions if p["stream"] == live and p["window"] == 6)
    print(f"stream actor exited -> next prediction: {t_back - t_down:.1f} s")  # docs/scale-out.md


@pytest.mark.cluster
def test_duration_counts_from_the_first_frame(ray_head, model_file, mqtt_broker, capsys):
    """`das-stream cluster --duration 1.5`: 1.5 s of frames, however long the actors took to start."""
    from streamer.cluster import driver

    cfg = config(model_file, mqtt_broker, ["synthetic:?fps=30&seed=5"], duration=1.5)
    pool_ready(cfg.replicas)
    lines: list[str] = []
    assert driver.run(cfg, out=lambda line, **_: lines.append(line), reuse_pool=True) == 0
    assert lines[0].endswith(f"(the Ray cluster at {ray_head.address})")
    final = next(line for line in lines if line.startswith("synthetic: "))
    assert int(final.split()[1]) >= 30  # about 45 frames at 30 fps; 0-15 if it counted the actor's start-up


@pytest.mark.cluster
def test_cli_beside_a_running_ray_starts_a_private_instance_and_status_names_it(
    ray_head, model_file, mqtt_broker, tmp_path
):
    """Without --address, `das-stream cluster` starts a private instance beside the Ray that runs on
    this host (for its TMPDIR), listening on loopback only; `cluster status` names what it reads; a
    wrong token is refused in one line."""
    import psutil

    env = {**ray_head.env, "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_AUTH_MODE")  # the driver finds out that the cluster wants a token
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")  # and that 127.0.0.1 means loopback
    env.pop("RAY_worker_niceness")  # and that its workers run at niceness 0, not Ray's 15
    ward = tmp_path / "ward.yaml"
    ward.write_text(
        f"sources: ['synthetic:?fps=30&seed=5']\nmodel: {model_file}\nreplicas: 1\nreplica_cpus: 0.5\n"
        f"engine: torch\nmqtt: {mqtt_broker.url}\nstats_interval: 1.0\nreport_interval: 0.0\n"
    )
    cli = [sys.executable, "-m", "das_stream.cli", "cluster"]

    def status(*args: str, token=None) -> subprocess.CompletedProcess:
        env_ = env if token is None else {**env, "RAY_AUTH_TOKEN_PATH": str(token)}
        return subprocess.run([*cli, "status", *args], env=env_, capture_output=True, text=True, timeout=120)

    wrong = tmp_path / "wrong-token"
    wrong.write_text("0" * 64)
    refused = status("--address", ray_head.address, token=wrong)
    assert (
        refused.returncode == 2 and f"the Ray cluster at {ray_head.address} refused this host's token" in refused.stderr
    )
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr

    proc = subprocess.Popen(
        [*cli, "--config", str(ward)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        started = next((line for line in proc.stdout if line.startswith("das-stream cluster:")), "")
        assert "a private Ray instance at 127.0.0.1:" in started, proc.stderr.read()
        private = started.rsplit(" at ", 1)[1].rstrip(")\n")
        assert private != ray_head.address
        opened = listening(psutil.Process(proc.pid).children(recursive=True))
        # Ray Serve binds each replica's inter-deployment gRPC port on all interfaces, whatever Ray's
        # node address (docs/scale-out.md); everything else listens on loopback only.
        others = [(a, n) for a, _, n in opened if not a.endswith("127.0.0.1") and "ServeReplica" not in n]
        assert opened and not others

        def reported() -> list[str]:  # the stream and the replica report once they run
            mine = status()
            assert mine.returncode == 0, mine.stderr
            lines = mine.stdout.splitlines()
            assert f"this host's das-stream Ray instance at {private}" in lines[0]
            stream = any(line.startswith("stream synthetic:") for line in lines)
            return lines if stream and any(line.startswith("replica ") for line in lines) else []

        lines = until_sync(reported, "`cluster status` showing the stream and the replica", poll=1.0)
        assert any(line.startswith("replica ") and ": cpu/torch " in line for line in lines)
        niceness = set()
        for p in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):  # an idle worker may exit meanwhile
                if p.name().startswith("ray::"):
                    niceness.add(p.nice())
        assert niceness == {0}  # Ray's workers at 0, not Ray's default 15
        proc.send_signal(signal.SIGINT)  # a clean stop: last window, final stats, exit 0
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert any(line.startswith("synthetic: ") for line in out.splitlines())
    for noise in ("Traceback", "InvalidAuthToken", "__call__ OK", "ValueError"):
        assert noise not in err  # no Serve access log at log_level info, no traceback
