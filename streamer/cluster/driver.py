"""The driver of ``das-stream cluster``: joins or starts Ray, deploys the embedder pool, starts one
actor per stream, waits, and shuts everything down cleanly.

```
driver --ray.init--> Ray (local instance, or --address / RAY_ADDRESS)
   |-- Serve app "das-stream": deployment "embedder" x replicas (stateless, @serve.batch)
   |-- StateActor "das-stream-state": checkpoints + figures (cluster status)
   '-- StreamActor x sources: source -> window -> sampler -> pool -> head -> MQTT
```
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from core.errors import ConfigError, DasStreamError, ModelFileError, SourceError

if TYPE_CHECKING:  # `cluster status` imports no sources (OpenCV, PyAV): only `run` reads a config
    from .config import ClusterConfig

log = logging.getLogger(__name__)

# The state actor is not detached: it lives while a handle to it does. The driver keeps one for
# the life of its process, so that runs reusing the pool (and the replicas, which report to it)
# keep the same one.
_STATE_HANDLES: list[Any] = []


def check_address(address: str, timeout: float) -> None:
    """ConfigError in one line when a Ray address does not accept a connection within ``timeout``."""
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise ConfigError(
            f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT; e.g. --address ray://10.0.0.5:10001"
        )
    import grpc  # Ray's own transport: a GCS (HOST:6379) and a Ray Client server (ray://) both speak gRPC

    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise ConfigError(
            f"Ray cluster at {address} did not answer within {timeout:g} s; "
            "check --address / RAY_ADDRESS, or leave it out to start a local Ray"
        ) from None
    finally:
        channel.close()


def read_model(cfg: ClusterConfig) -> tuple[bytes, Any]:
    """The model file's bytes (shipped to every actor) and the window model read from them (a
    package, or a torch model file); ModelFileError if unusable. Without ``model``: the demo, its
    package where torch is not installed."""
    import importlib.util

    from sampler.package import load_window_model
    from streamer.app import demo_model_path

    path = Path(cfg.model) if cfg.model else demo_model_path(package=importlib.util.find_spec("torch") is None)
    model = load_window_model(path, device="cpu")  # validates: a one-line ModelFileError otherwise
    if cfg.max_batch_frames < model.k:
        raise ConfigError(
            f"max_batch_frames={cfg.max_batch_frames} is below the model's k={model.k} "
            f"(in {cfg._origin}); a window's picks must fit one batch"
        )
    return path.read_bytes(), model


def stream_names(cfg: ClusterConfig, size: int) -> list[str]:
    """The stream ids, named as ``das-stream run`` names them (name, name-1, ...)."""
    from streamer.app import build_sources

    return [s.name for s in build_sources(cfg.run_config(), size=size)]


class Cluster:
    """One cluster run. ``start()``, then ``wait()`` / ``stop()``, then ``close()``.

    Args:
        cfg: the validated settings.
    """

    def __init__(self, cfg: ClusterConfig, *, reuse_pool: bool = False) -> None:
        self.cfg = cfg
        self.reuse_pool = reuse_pool
        self.model_bytes, self.model = read_model(cfg)
        self.names = stream_names(cfg, self.model.input_size)
        self.owns_ray = False
        self.actors: dict[str, Any] = {}
        self.refs: dict[str, Any] = {}
        self.handle: Any = None
        self.state: Any = None
        self.final: dict[str, dict[str, Any]] = {}

    # --- start ---
    def needed_cpus(self) -> float:
        return self.cfg.replicas * self.cfg.replica_cpus + len(self.names) * self.cfg.stream_cpus

    def connect(self) -> None:
        import ray

        from .serve import NAMESPACE

        cfg = self.cfg
        if cfg.address:
            check_address(cfg.address, cfg.connect_timeout)
        if ray.is_initialized():  # the caller joined Ray already (tests, notebooks)
            return
        if cfg.address:
            ray.init(address=cfg.address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=True)
        else:
            cpus = max(os.cpu_count() or 1, math.ceil(self.needed_cpus()))
            gpus = None if cfg.replica_gpus == 0 else math.ceil(cfg.replicas * cfg.replica_gpus)
            # A local instance talks over loopback only: nothing of it is reachable from outside.
            ray.init(
                num_cpus=cpus,
                num_gpus=gpus,
                include_dashboard=False,
                namespace=NAMESPACE,
                logging_level=logging.WARNING,
                _node_ip_address="127.0.0.1",
            )
        self.owns_ray = True

    def check_resources(self) -> None:
        import ray

        total = ray.cluster_resources()
        need = {"CPU": self.needed_cpus(), "GPU": self.cfg.replicas * self.cfg.replica_gpus}
        for kind, amount in need.items():
            if amount > total.get(kind, 0.0) + 1e-9:
                raise ConfigError(
                    f"the run needs {amount:g} {kind} ({self.cfg.replicas} replicas x replica_{kind.lower()}s, "
                    f"{len(self.names)} streams x stream_cpus) but the Ray cluster has {total.get(kind, 0.0):g}; "
                    "lower them or add nodes"
                )

    def start(self) -> None:
        import ray
        from ray import serve

        from .actors import StateActor, StreamActor, StreamSettings
        from .serve import APP_NAME, NAMESPACE, STATE_ACTOR

        cfg = self.cfg
        self.connect()
        self.check_resources()
        # One state actor per Ray instance, kept across runs (the replicas hold its handle).
        self.state = StateActor.options(name=STATE_ACTOR, namespace=NAMESPACE, get_if_exists=True).remote()
        _STATE_HANDLES.append(self.state)  # the creating handle must stay (a looked-up one does not own it)
        serve.start(proxy_location="Disabled")
        reuse = self.reuse_pool and APP_NAME in serve.status().applications
        ray.get(self.state.reset.remote(keep_replicas=reuse))
        self.handle = serve.get_app_handle(APP_NAME) if reuse else self._deploy()
        # Nested in a list: the actors fetch it; the driver owns it for the whole run, so that a
        # restarted actor finds it again.
        self.model_ref = [ray.put(self.model_bytes)]
        settings = StreamSettings(
            run=cfg.run_config(),
            policy=cfg.policy,
            max_batch_frames=cfg.max_batch_frames,
            request_timeout=cfg.request_timeout,
            request_retries=cfg.request_retries,
            log_level=cfg.log_level,
        )
        retries = 0 if cfg.stream_restarts == 0 else -1
        for spec, name in zip(cfg.sources, self.names):
            actor = StreamActor.options(
                name=f"stream:{name}",
                namespace=NAMESPACE,
                num_cpus=cfg.stream_cpus,
                max_restarts=cfg.stream_restarts,
                max_task_retries=retries,
            ).remote(spec, name, self.model_ref, settings, self.handle)
            self.actors[name] = actor
            self.refs[name] = actor.run.remote()

    def _deploy(self) -> Any:
        from ray import serve

        from .serve import APP_NAME, EmbedderReplica

        cfg = self.cfg
        threads = cfg.threads or max(1, math.ceil(cfg.replica_cpus))
        app = EmbedderReplica.options(
            num_replicas=cfg.replicas,
            max_ongoing_requests=max(16, 2 * cfg.max_batch_frames),
            ray_actor_options={"num_cpus": cfg.replica_cpus, "num_gpus": cfg.replica_gpus},
        ).bind(
            self.model_bytes,
            engine=cfg.engine,
            device=cfg.device,
            threads=threads,
            max_batch_frames=cfg.max_batch_frames,
            batch_wait_s=cfg.batch_wait_ms / 1000.0,
            report_interval=cfg.report_interval,
        )
        return serve.run(app, name=APP_NAME, route_prefix=None)

    # --- run ---
    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every stream has ended (True) or ``timeout`` passed (False); collects final stats."""
        import ray

        pending = {ref: name for name, ref in self.refs.items() if name not in self.final}
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = ray.wait(list(pending), num_returns=1, timeout=left)
            if not done:
                return False
            for ref in done:
                name = pending.pop(ref)
                self.final[name] = self._result(name, ref)
        return True

    def _result(self, name: str, ref: Any) -> dict[str, Any]:
        import ray
        from ray.exceptions import RayTaskError

        try:
            return ray.get(ref)
        except RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
            if isinstance(cause, DasStreamError):
                return {"stream": name, "error": str(cause)}
            raise

    def stop(self) -> None:
        """Ask every stream to stop cleanly (flush the last window, publish final stats)."""
        import ray

        refs = [a.stop.remote() for name, a in self.actors.items() if name not in self.final]
        ray.wait(refs, num_returns=len(refs), timeout=10.0)

    def snapshot(self) -> dict[str, Any]:
        import ray

        return ray.get(self.state.snapshot.remote())

    def close(self) -> None:
        """Remove the Serve app and the actors; shut Ray down when this run started it."""
        import ray
        from ray import serve

        from .serve import APP_NAME

        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        if self.state is not None and not self.reuse_pool:
            ray.kill(self.state, no_restart=True)
        if self.handle is not None and not self.reuse_pool:
            serve.delete(APP_NAME)
        if self.owns_ray:
            serve.shutdown()
            ray.shutdown()


def run(cfg: ClusterConfig, *, out=print) -> int:
    """``das-stream cluster``: run until the sources end, ``duration`` or SIGINT/SIGTERM."""
    import signal

    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cluster = Cluster(cfg)
    stop = threading.Event()
    previous: dict = {}
    try:
        cluster.start()
        # After ray.init, which installs its own SIGTERM handler (exit at once): ours stops cleanly.
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        out(
            f"das-stream cluster: {len(cluster.names)} streams, {cfg.replicas} embedder replicas "
            f"({'Ray at ' + cfg.address if cfg.address else 'local Ray'})",
            flush=True,
        )
        deadline = None if cfg.duration is None else time.monotonic() + cfg.duration
        while not cluster.wait(timeout=0.5):
            if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                cluster.stop()
                cluster.wait()
                break
        errors = []
        for name in cluster.names:
            final = cluster.final.get(name, {})
            if "error" in final and "frames_in" not in final:
                errors.append(f"stream {name}: {final['error']}")
                continue
            extra = final.get("extra", {})
            out(
                f"{name}: {final.get('frames_in', 0)} frames, {final.get('windows', 0)} windows, "
                f"{final.get('frames_dropped', 0)} dropped, latency p99 {final.get('latency_ms', {}).get('p99', 0)} ms, "
                f"retries {extra.get('retries', 0)}, restarts {extra.get('restarts', 0)}",
                flush=True,
            )
            if extra.get("error"):
                errors.append(f"stream {name}: {extra['error']}")
        if errors:
            raise SourceError(errors[0])
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        cluster.close()


def status(address: str | None, *, timeout: float = 10.0, out=print) -> int:
    """``das-stream cluster status``: per-stream and per-replica figures of the running cluster."""
    import ray

    from .names import NAMESPACE, STATE_ACTOR  # not .serve: status loads no torch

    address = address or "auto"
    check_address(address, timeout)
    try:
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.ERROR, log_to_driver=False)
    except ConnectionError as exc:
        raise ConfigError(
            f"no Ray cluster found at {address} ({str(exc).splitlines()[0]}); "
            "start one with `das-stream cluster` or give --address"
        ) from None
    try:
        try:
            state = ray.get_actor(STATE_ACTOR, namespace=NAMESPACE)
        except ValueError:
            raise ConfigError(
                f"no das-stream cluster run in the Ray cluster at {address}; start one with `das-stream cluster`"
            ) from None
        snap = ray.get(state.snapshot.remote(), timeout=timeout)
        for line in format_status(snap):
            out(line)
        return 0
    finally:
        ray.shutdown()


def format_status(snap: dict[str, Any]) -> list[str]:
    """Human-readable lines: one per stream, one per replica."""
    lines = [
        f"up {snap['now'] - snap['t_start']:.0f} s; {len(snap['streams'])} streams, {len(snap['replicas'])} replicas"
    ]
    for name, entry in sorted(snap["streams"].items()):
        s = (entry.get("ckpt") or {}).get("stats") or {}
        extra = s.get("extra", {})
        lines.append(
            f"stream {name}: frames_in {s.get('frames_in', 0)} dropped {s.get('frames_dropped', 0)} windows "
            f"{s.get('windows', 0)} fps {s.get('fps_in', 0)} latency p50/p99 {s.get('latency_ms', {}).get('p50', 0)}/"
            f"{s.get('latency_ms', {}).get('p99', 0)} ms retries {extra.get('retries', 0)} restarts {entry['restarts']} "
            f"gap {entry['gap_s']:.1f} s replicas {extra.get('replicas', {})}"
        )
    for rid, f in sorted(snap["replicas"].items()):
        up = max(1e-9, f["t"] - f["t_start"])
        mean = f["frames"] / f["batches"] if f["batches"] else 0.0
        lines.append(
            f"replica {rid}: {f['device']}/{f['engine']} requests {f['requests']} frames {f['frames']} batches "
            f"{f['batches']} (mean {mean:.1f} frames) busy {100 * f['busy_s'] / up:.0f}% in_flight {f['in_flight']} "
            f"pid {f['pid']} reported {snap['now'] - f['t']:.0f} s ago"
        )
    return lines


__all__ = ["Cluster", "ModelFileError", "check_address", "format_status", "run", "status"]
