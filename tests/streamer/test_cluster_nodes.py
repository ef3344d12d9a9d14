"""A node dies: `das-stream cluster` on Ray's own multi-node test cluster (``ray.cluster_utils``).

A head and a worker node run on this machine, both on 127.0.0.1. A file replay prefers the worker
(``nodes: prefer:ward-2``, its custom resource), a live stream is pinned to the head by its node
label (``ward=icu``); the worker is then killed (its raylet and every process on it, no graceful
shutdown), and the replay must come back on the head with the gap reported and no frame
classified twice, while the head's stream goes on. The recovery time is printed (docs/scale-out.md quotes it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time

import pytest
from cluster_help import Subscriber, make_ward_model, ray_auth, run_single_process, same_window
from streamer_help import write_video

from streamer.cluster.config import ClusterConfig

ray = pytest.importorskip("ray")  # a declared dev dependency; CI installs it
pytestmark = pytest.mark.timeout(600)  # Ray's start-up on a loaded 2-core machine: bounds a hang only

FRAMES = 180  # 6 s at 30 fps: the worker dies while the replay runs


@pytest.fixture
def two_nodes(monkeypatch):
    with ray_auth(RAY_AUTH_MODE="disabled"):  # Ray's test cluster starts without tokens
        yield from _two_nodes(monkeypatch)


def _two_nodes(monkeypatch):
    """A head (the driver's node) and a worker node with the custom resource ``ward-2``; node death
    is noticed within ~2 s (Ray's default is 30 s)."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster as RayCluster

    from streamer.cluster import connect
    from streamer.cluster.serve import NAMESPACE

    root = tempfile.mkdtemp(prefix="dsn", dir="/tmp")  # short: Ray's socket paths
    monkeypatch.setenv("RAY_TMPDIR", root)  # cluster_utils records its address in the default temp dir
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", ray_constants.ENABLE_RAY_CLUSTER)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_worker_niceness", "0")  # as docs/scale-out.md says a ward's nodes start
    connect.loopback_only()
    system = {"health_check_period_ms": 500, "health_check_timeout_ms": 500, "health_check_failure_threshold": 4}
    nodes = RayCluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
            "labels": {"ward": "icu"},
            "temp_dir": f"{root}/ray",
            "_system_config": system,
        },
    )
    worker = nodes.add_node(num_cpus=2, node_ip_address="127.0.0.1", resources={"ward-2": 1})
    try:
        connect.join(nodes.address, timeout=30, namespace=NAMESPACE, log_to_driver=False)
        yield nodes, worker
    finally:
        ray.shutdown()
        nodes.shutdown()


@pytest.mark.cluster
async def test_streams_move_to_the_head_when_their_node_dies(two_nodes, mqtt_broker, tmp_path):
    from streamer.cluster.driver import Cluster

    nodes, worker = two_nodes
    model = make_ward_model(tmp_path / "ward.pt")
    video = write_video(tmp_path / "replay.mp4", frames=FRAMES, fps=30, size=48)
    replay, pinned = "replay", "synthetic"
    cfg = ClusterConfig(
        sources=(f"video:{video}", "synthetic:?fps=30&seed=4"),
        model=str(model),
        stride=4,
        replicas=1,
        replica_cpus=0.5,
        engine="torch",
        overload="block",  # no frame dropped under load: the replay is compared with `run`'s
        gap=0.0,  # nor a window closed early by a stall of this loaded machine
        nodes={replay: "prefer:ward-2", pinned: "ward=icu"},  # pinned by the head's label
        mqtt=mqtt_broker.url,
        stats_interval=1.0,
        max_batch_frames=16,
        request_timeout=20.0,
    )
    expected = await run_single_process(
        dataclasses.replace(cfg, sources=cfg.sources[:1], nodes={}, pacing=False), "run", mqtt_broker
    )
    head_id = nodes.head_node.node_id
    async with Subscriber(mqtt_broker.port) as sub:
        cluster = await asyncio.to_thread(Cluster, cfg)
        await asyncio.to_thread(cluster.start)
        try:
            await sub.until(lambda: len(sub.by_window(replay)) >= 3, 180)
            streams = (await asyncio.to_thread(cluster.snapshot))["streams"]
            assert streams[replay]["node_id"] == worker.node_id  # as preferred
            assert streams[pinned]["node_id"] == head_id
            t_dead = time.time()
            await asyncio.to_thread(nodes.remove_node, worker, False)  # kill -9 of the node, no goodbye
            await sub.until(lambda: sub.ended(replay), 240)
            await asyncio.to_thread(cluster.stop)
            assert await asyncio.to_thread(cluster.wait, 60)
            await sub.until(lambda: sub.ended(replay, pinned), 30)
            streams = (await asyncio.to_thread(cluster.snapshot))["streams"]
        finally:
            await asyncio.to_thread(cluster.close)
    assert {streams[n]["node_id"] for n in (replay, pinned)} == {head_id}  # the replay moved to the head
    assert "restarts" not in sub.final(pinned)["extra"]  # the head's stream never stopped
    windows = sub.by_window(replay)
    back = min(w for w, p in windows.items() if p["restarted"])
    first = windows[back]
    assert first["gap_before"] and first["gap_ms"] > 0 and sub.final(replay)["extra"]["restarts"] == 1
    t_back = min(t for t, p in sub.predictions if p["stream"] == replay and p["window"] == back)
    print(f"node killed -> the replay published again after {t_back - t_dead:.1f} s (gap_ms {first['gap_ms']:.0f})")
    assert any(t_dead < t < t_back for t, p in sub.predictions if p["stream"] == pinned)  # not even paused
    # The replay went on from its checkpoint: every window is the one `run` publishes, none twice;
    # at most the window that was between its checkpoint and its publishing is lost.
    got, want = sub.by_window(replay), expected[replay]
    assert set(got) <= set(want) and len(want) - len(got) <= 1
    for w, p in got.items():
        same_window(p, want[w])
    final = sub.final(replay)
    assert final["frames_in"] == FRAMES and final["frames_pending"] == 0
    counted = ("frames_forwarded", "frames_skipped", "frames_dropped", "frames_resampled_out")
    assert final["frames_in"] == sum(final[k] for k in counted)
