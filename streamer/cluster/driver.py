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
from typing import TYPE_CHECKING, Any, cast

from core.errors import ConfigError, DasStreamError, ModelFileError, SourceError

from . import connect
from .faults import Faults

if TYPE_CHECKING:  # `cluster status` imports no sources (OpenCV, PyAV): only `run` reads a config
    from .config import ClusterConfig

log = logging.getLogger(__name__)

# The state actor is not detached: it lives while a handle to it does. The driver keeps one for
# the life of its process, so that runs reusing the pool (and the replicas, which report to it)
# keep the same one.
_STATE_HANDLES: list[Any] = []


def placement(where: str | None, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The actor options that place a stream (the ``nodes`` key; ``nodes`` is ``ray.nodes()``).

    ``key=value`` pins it to the nodes with that label (``ray start --labels``); a plain name to the
    nodes with that custom resource (``ray start --resources``; a stream takes a sliver of it, so
    any number fit). A pinned stream restarts only there: right for a file or a device that only
    that node has. ``prefer:`` before either puts it on such a node while one is alive and lets Ray
    restart it anywhere when that node dies (network sources).
    """
    if not where:
        return {}
    spec = where.removeprefix("prefer:").strip()
    key, sep, value = (part.strip() for part in spec.partition("="))
    if not where.startswith("prefer:"):
        return {"label_selector": {key: value}} if sep else {"resources": {spec: 0.001}}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    for node in nodes:
        labels, resources = node.get("Labels") or {}, node.get("Resources") or {}
        if node.get("Alive") and ((sep and labels.get(key) == value) or (not sep and spec in resources)):
            return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=True)}
    log.warning("no live node has %s (nodes: %s); the stream goes where Ray puts it", spec, where)
    return {}


def read_model(cfg: ClusterConfig) -> tuple[bytes, Any]:
    """The model file's bytes (shipped to every actor) and the window model read from them (a
    package, or a torch model file), checked as `run` checks it; ModelFileError or ConfigError if
    unusable. Without ``model``: the demo `run` would use."""
    import dataclasses

    from streamer.app import default_model_path, load_model

    path = Path(cfg.model) if cfg.model else default_model_path(cfg)
    model = load_model(dataclasses.replace(cfg.run_config(), model=str(path), device="cpu", threads=None))
    if cfg.max_batch_frames < model.k:
        raise ConfigError(
            f"max_batch_frames={cfg.max_batch_frames} is below the model's k={model.k} "
            f"(in {cfg._origin}); a window's picks must fit one batch"
        )
    return path.read_bytes(), model


def stream_names(cfg: ClusterConfig, model: Any) -> list[str]:
    """The stream ids, named as ``das-stream run`` names them (name, name-1, ...)."""
    from streamer.app import build_sources, frame_size

    return [s.name for s in build_sources(cfg, size=frame_size(model))]


class Cluster:
    """One cluster run. ``start()``, then ``wait()`` / ``stop()``, then ``close()``.

    Args:
        cfg: the validated settings.
        reuse_pool: keep the embedder deployment (and the state actor) for the next run in this
            process, and use one left by an earlier run (tests, benchmarks).
        faults: failures to inject, by stream name (tests and fire drills; see ``faults.py``).
    """

    def __init__(
        self, cfg: ClusterConfig, *, reuse_pool: bool = False, faults: dict[str, Faults] | None = None
    ) -> None:
        self.cfg = cfg
        self.reuse_pool = reuse_pool
        self.faults = dict(faults or {})
        self.model_bytes, model = read_model(cfg)
        self.names = stream_names(cfg, model)
        from streamer.app import observe_addresses

        self.observe_at = observe_addresses(cfg)  # a bad --web / --metrics fails before Ray starts
        self.watch: Any = None
        unknown = sorted(set(cfg.nodes) - set(self.names))
        if unknown:
            raise ConfigError(
                f"nodes: no stream named {unknown[0]!r} (in {cfg._origin}); the streams are {', '.join(self.names)}"
            )
        self.owns_ray = False
        self.address = ""
        self.private: connect.Address | None = None
        self.actors: dict[str, Any] = {}
        self.refs: dict[str, Any] = {}
        self.handle: Any = None
        self.state: Any = None
        self.own_state = False
        self.final: dict[str, dict[str, Any]] = {}

    # --- start ---
    def needed_cpus(self) -> float:
        return self.cfg.replicas * self.cfg.replica_cpus + len(self.names) * self.cfg.stream_cpus

    def connect(self) -> None:
        """Join ``cfg.address``, or start a private Ray instance (the rule: ``streamer.cluster.connect``)."""
        import ray

        from .names import NAMESPACE

        cfg = self.cfg
        if ray.is_initialized():  # the caller joined Ray already (tests, notebooks)
            self.address = ray.get_runtime_context().gcs_address
            return
        if cfg.address:
            self.address = connect.join(cfg.address, timeout=cfg.connect_timeout, namespace=NAMESPACE).text
        else:
            cpus = max(os.cpu_count() or 1, math.ceil(self.needed_cpus()))
            self.private = connect.start_private(num_cpus=cpus, namespace=NAMESPACE)  # GPUs: as Ray finds them
            self.address = self.private.text
        self.owns_ray = True

    def check_resources(self) -> None:
        import ray

        total = ray.cluster_resources()
        need = {"CPU": self.needed_cpus(), "GPU": self.cfg.replicas * self.cfg.replica_gpus}
        if need["GPU"] and not total.get("GPU"):
            raise ConfigError(
                f"replica_gpus={self.cfg.replica_gpus:g} but the Ray cluster at {self.address} has no GPU; "
                "set replica_gpus: 0 (replicas on CPUs) or add nodes with GPUs"
            )
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
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from .actors import StateActor, StreamActor, StreamSettings
        from .names import APP_NAME, NAMESPACE, STATE_ACTOR

        cfg = self.cfg
        self.connect()
        self.check_resources()
        # One state actor per Ray instance, kept across runs (the replicas hold its handle).
        try:
            ray.get_actor(STATE_ACTOR, namespace=NAMESPACE)
            self.own_state = False  # an earlier run's: left for it
        except ValueError:
            self.own_state = True
        # On the driver's node: the checkpoints must outlive any other node.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.state = StateActor.options(  # type: ignore[attr-defined]  # @ray.remote/@serve.deployment add it
            name=STATE_ACTOR, namespace=NAMESPACE, get_if_exists=True, scheduling_strategy=here
        ).remote()
        _STATE_HANDLES.append(self.state)  # the creating handle must stay (a looked-up one does not own it)
        serve.start(proxy_location="Disabled", logging_config=self.serve_logging())
        reuse = self.reuse_pool and APP_NAME in serve.status().applications
        ray.get(self.state.reset.remote(keep_replicas=reuse))
        self.handle = serve.get_app_handle(APP_NAME) if reuse else self._deploy()
        # Nested in a list: the actors fetch it; the driver owns it for the whole run, so that a
        # restarted actor finds it again.
        self.model_ref = [ray.put(self.model_bytes)]
        settings = StreamSettings(
            run=cfg.run_config(),
            max_batch_frames=cfg.max_batch_frames,
            request_timeout=cfg.request_timeout,
            request_retries=cfg.request_retries,
            log_level=cfg.log_level,
            observe=bool(cfg.web or cfg.metrics),
            faults=self.faults,
        )
        retries = 0 if cfg.stream_restarts == 0 else -1
        nodes = ray.nodes()
        for spec, name in zip(cfg.sources, self.names):
            actor = StreamActor.options(  # type: ignore[attr-defined]  # @ray.remote/@serve.deployment add it
                name=f"stream:{name}",
                namespace=NAMESPACE,
                num_cpus=cfg.stream_cpus,
                max_restarts=cfg.stream_restarts,
                max_task_retries=retries,
                **placement(cfg.nodes.get(name), nodes),
            ).remote(spec, name, self.model_ref, settings, self.handle)
            self.actors[name] = actor
            self.refs[name] = actor.run.remote()
        if cfg.web or cfg.metrics:
            from .watch import Watch

            web, metrics = self.observe_at
            self.watch = Watch(self.actors, web=web, metrics=metrics)
            self.watch.start()

    def _deploy(self) -> Any:
        from ray import serve

        from .serve import APP_NAME, EmbedderReplica

        cfg = self.cfg
        threads = cfg.threads or max(1, math.ceil(cfg.replica_cpus))
        app = EmbedderReplica.options(  # type: ignore[attr-defined]  # @ray.remote/@serve.deployment add it
            num_replicas=cfg.replicas,
            max_ongoing_requests=max(16, 2 * cfg.max_batch_frames),
            health_check_period_s=2.0,  # a dead replica is noticed (and replaced) within ~2 s, not Serve's 10
            ray_actor_options={"num_cpus": cfg.replica_cpus, "num_gpus": cfg.replica_gpus},
            logging_config=self.serve_logging(),
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

    def serve_logging(self) -> dict[str, Any]:
        """Serve's own logs at the run's level; its per-request access log only with ``log_level: debug``."""
        return {"log_level": self.cfg.log_level.upper(), "enable_access_log": self.cfg.log_level == "debug"}

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

    def wait_running(self, timeout: float) -> None:
        """Wait until every stream actor has started its stream (or already ended), up to ``timeout``."""
        import ray

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = set(self.snapshot()["streams"])
            ended = {name for name, ref in self.refs.items() if ray.wait([ref], timeout=0)[0]}
            if set(self.names) <= started | ended:
                return
            time.sleep(0.2)

    def snapshot(self) -> dict[str, Any]:
        import ray

        return ray.get(self.state.snapshot.remote())

    def close(self) -> None:
        """Remove what this run put in the Ray cluster (a joined cluster keeps Serve and anything
        else for its other users); a private instance is simply shut down with all it holds."""
        import ray
        from ray import serve

        from .names import APP_NAME

        if self.watch is not None:
            self.watch.stop()
        if self.private is not None:
            ray.shutdown()
            connect.forget_private(self.private)
            return
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        if self.state is not None and self.own_state and not self.reuse_pool:
            ray.kill(self.state, no_restart=True)
        if self.handle is not None and not self.reuse_pool:
            serve.delete(APP_NAME)
        if self.owns_ray:
            ray.shutdown()


def run(cfg: ClusterConfig, *, out=print, reuse_pool: bool = False) -> int:
    """``das-stream cluster``: run until the sources end, ``duration`` (from the first frame of any
    stream, so Ray's start-up does not count) or SIGINT/SIGTERM."""
    import signal

    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cluster = Cluster(cfg, reuse_pool=reuse_pool)
    stop = threading.Event()
    previous: dict = {}
    try:
        cluster.start()
        cluster.wait_running(timeout=120.0)  # the line below means the streams run
        # After ray.init, which installs its own SIGTERM handler (exit at once): ours stops cleanly.
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        where = "a private Ray instance" if cluster.private else "the Ray cluster"
        out(
            f"das-stream cluster: {len(cluster.names)} streams, {cfg.replicas} embedder replicas "
            f"({where} at {cluster.address})",
            flush=True,
        )
        if cluster.watch is not None:
            for role, url in cluster.watch.urls.items():
                out(f"{role}: {url}{'/metrics' if role == 'metrics' else '/'}", flush=True)
        deadline = None
        while not cluster.wait(timeout=0.5):
            if cfg.duration is not None and deadline is None:
                first = cluster.snapshot().get("t_first_frame")
                deadline = None if first is None else first + cfg.duration
            if stop.is_set() or (deadline is not None and time.time() >= deadline):
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
    """``das-stream cluster status``: per-stream and per-replica figures of a running cluster run:
    the one at ``address``, else this host's private instance (never another Ray on the host)."""
    import ray

    from .names import NAMESPACE, STATE_ACTOR  # not .serve: status loads no torch

    if address:
        where = connect.resolve(address)
        what = f"the Ray cluster at {where.text}"
    else:
        where = connect.recorded_private()
        what = f"this host's das-stream Ray instance at {where.text} (recorded in {connect.address_file()})"
    try:
        connect.join(where.text, timeout=timeout, namespace=NAMESPACE, log_to_driver=False)
    except ConfigError as exc:
        if address:
            raise
        raise ConfigError(f"{what} does not answer: the run has ended ({exc})") from None
    try:
        try:
            state = ray.get_actor(STATE_ACTOR, namespace=NAMESPACE)
        except ValueError:
            raise ConfigError(f"no das-stream cluster run in {what}; start one with `das-stream cluster`") from None
        snap = cast(dict[str, Any], ray.get(state.snapshot.remote(), timeout=timeout))
        out(f"das-stream cluster status of {what}")
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
            f"gap {entry['gap_s']:.1f} s replicas {extra.get('replicas', {})} node {entry.get('node', '?')}"
        )
    for rid, f in sorted(snap["replicas"].items()):
        up = max(1e-9, f["t"] - f["t_start"])
        mean = f["frames"] / f["batches"] if f["batches"] else 0.0
        lines.append(
            f"replica {rid}: {f['device']}/{f['engine']} requests {f['requests']} frames {f['frames']} batches "
            f"{f['batches']} (mean {mean:.1f} frames) busy {100 * f['busy_s'] / up:.0f}% in_flight {f['in_flight']} "
            f"pid {f['pid']} node {f.get('node_ip', '?')} reported {snap['now'] - f['t']:.0f} s ago"
        )
    return lines


__all__ = ["Cluster", "ModelFileError", "format_status", "placement", "run", "status"]
