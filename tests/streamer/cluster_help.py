"""Helpers for the cluster tests: a real Ray cluster started as a ward's IT starts one, a real MQTT
subscriber, and waiting on conditions.

:class:`RayHead` runs ``ray start --head --node-ip-address 127.0.0.1`` with Ray's token
authentication (its own token file) in its own short temp dir, and stops exactly the processes it
started (never ``ray stop``, which stops every Ray of the user on the host).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt
import psutil
import waiting
from brokers import free_port
from streamer_help import make_model_file

from sampler.model import SampledClassifier
from streamer import app
from streamer.cluster.config import ClusterConfig

RAY = str(Path(sys.executable).with_name("ray"))


def make_ward_model(path: Path) -> Path:
    """A small model trained (as far as the runtime can tell) on 15 fps clips of 48 x 48: streams
    are resampled to 15 fps and delivered at 48 px, as `run` does it."""
    make_model_file(path, num_frames=8, k=4, input_size=32, feature_size=16)
    model = SampledClassifier.load(path)
    model.meta["preprocessing"] = {"fps": 15.0, "size": 48}
    model.save(path)
    return path


class RayHead:
    """A one-node Ray cluster from ``ray start --head`` on loopback, with token authentication.

    Attributes:
        root: its short temp dir (Ray's socket paths must stay short); ``root / "ray"`` is Ray's.
        token: the token file (what a ward's IT copies to the driver's host and the nodes).
        address: ``127.0.0.1:PORT`` of its GCS.
        env: the environment its nodes and drivers use (token mode, loopback, TMPDIR=root, so that
            for a process started with it Ray "already runs on this host").
    """

    def __init__(self, *, num_cpus: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dsr", dir="/tmp"))
        self.token = self.root / "token"
        self.token.write_text(secrets.token_hex(32))
        self.address = f"127.0.0.1:{free_port()}"
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_worker_niceness": "0",  # as docs/scale-out.md says a ward's nodes start
            "TMPDIR": str(self.root),
        }
        self.num_cpus = num_cpus

    def start(self) -> RayHead:
        cmd = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", self.address.split(":")[1]]
        cmd += ["--num-cpus", str(self.num_cpus), "--num-gpus", "0", "--include-dashboard", "false"]
        cmd += ["--temp-dir", str(self.root / "ray"), "--disable-usage-stats"]
        subprocess.run(cmd, env=self.env, check=True, capture_output=True, timeout=180)
        return self

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster (its daemons carry its temp dir; workers are their children)."""
        mine = []
        for p in psutil.process_iter(["cmdline"]):
            if str(self.root) in " ".join(p.info["cmdline"] or []):
                mine.append(p)
        return list({p.pid: p for p in mine + [c for p in mine for c in _children(p)]}.values())

    def stop(self) -> None:
        procs = self.processes()
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            p.kill()
        psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def _children(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@contextlib.contextmanager
def ray_auth(**env: str):
    """Ray's authentication settings of this process for a while (``RAY_AUTH_*`` variables), and
    back afterwards. Ray reads them into its process-wide config once; joining a token cluster
    switches this process to token mode, which a cluster started later without tokens refuses."""
    from ray._raylet import AuthenticationTokenLoader, Config

    names = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(env)
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def listening(procs: list[psutil.Process]) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket these processes listen on."""
    pids = {p.pid: p for p in procs}
    out = []
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            try:
                name = pids[c.pid].name()
            except psutil.NoSuchProcess:
                continue
            out.append((c.laddr.ip, c.laddr.port, name))
    return out


class Subscriber:
    """Records every prediction and stats payload under ``das/#`` with its arrival time (and the raw
    payloads by topic, for ``das-stream subscribe``'s decoder)."""

    def __init__(self, port: int, prefix: str = "das") -> None:
        self.port = port
        self.prefix = prefix
        self.predictions: list[tuple[float, dict]] = []
        self.stats: list[dict] = []
        self.raw: list[tuple[str, bytes]] = []

    async def __aenter__(self) -> Subscriber:
        self.client = aiomqtt.Client(
            "127.0.0.1", self.port, identifier=f"test-cluster-{os.getpid()}-{self.prefix}", clean_session=True
        )
        await self.client.__aenter__()
        await self.client.subscribe(f"{self.prefix}/#", qos=1)
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async for msg in self.client.messages:
            data = json.loads(msg.payload)
            self.raw.append((str(msg.topic), bytes(msg.payload)))
            if data["type"] == "prediction":
                self.predictions.append((time.time(), data))
            else:
                self.stats.append(data)

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        await self.client.__aexit__(None, None, None)

    def final(self, stream: str) -> dict:
        return [s for s in self.stats if s["stream"] == stream and s["final"]][-1]

    def ended(self, *streams: str) -> bool:
        return all(any(s["stream"] == n and s["final"] for s in self.stats) for n in streams)

    def by_window(self, stream: str) -> dict[int, dict]:
        out: dict[int, dict] = {}
        for _, p in self.predictions:
            if p["stream"] == stream:
                assert out.setdefault(p["window"], p) == p, "two different predictions for one window"
        return out

    async def until(self, predicate, timeout: float) -> None:
        await waiting.until(predicate, "the predictions and stats expected", timeout=timeout, poll=0.1)


async def until(predicate, what: str, timeout: float) -> None:
    """Wait until ``predicate()``, a blocking call (e.g. to Ray), is true; it runs in a thread."""
    await waiting.until(lambda: asyncio.to_thread(predicate), what, timeout=timeout, poll=0.2)


async def run_single_process(cfg: ClusterConfig, prefix: str, broker) -> dict[str, dict[int, dict]]:
    """What `das-stream run` publishes for the same settings: predictions by stream and window."""
    run_cfg = dataclasses.replace(cfg.run_config(), topic_prefix=prefix, console=False)
    async with Subscriber(broker.port, prefix) as sub:
        pipeline = await asyncio.to_thread(app.build_pipeline, run_cfg)  # what `run` runs
        summary = await pipeline.run()
        names = list(summary.final)
        await sub.until(lambda: sub.ended(*names), 30)
    return {name: sub.by_window(name) for name in names}


def same_window(got: dict, want: dict) -> None:
    assert (got["first_seq"], got["last_seq"], got["selected"]) == (
        want["first_seq"],
        want["last_seq"],
        want["selected"],
    )
    assert got["probs"].keys() == want["probs"].keys() and got["model"] == want["model"]
    assert all(abs(got["probs"][c] - want["probs"][c]) <= 1e-4 for c in got["probs"])
