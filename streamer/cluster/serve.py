"""The embedder pool: a Ray Serve deployment of stateless replicas, and the client side of it.

A replica wraps one *embedder*, the callable every engine of ``streamer.inference`` provides:
``embedder(frames uint8 (N, S, S)) -> float32 (N, E)`` (a numpy array or a CPU tensor). It
receives the picked frames of any stream (one request per stream window, only the k picks, uint8
at the model's input size), batches requests across streams with ``@serve.batch`` (the batch is
sized in frames, ``max_batch_frames``, with a bounded wait ``batch_wait_ms``) and returns the
embeddings with the id of the replica that computed them. Pooling and the head stay with the
stream, so replicas hold no per-stream state and any of them can serve any request.

:class:`RemoteEmbedder` is the stream side: the same callable signature, so the stream actor's
``InferenceEngine`` uses it in place of a local backbone. A request that fails because its
replica died (or times out) is sent again (Serve routes it to a live replica) and counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from sampler.package import PackageModel, package_device
from sampler.package_file import is_package
from streamer.inference.embedders import Embedder

from .names import APP_NAME, DEPLOYMENT_NAME, NAMESPACE, STATE_ACTOR  # noqa: F401 - APP_NAME re-exported

log = logging.getLogger(__name__)


def load_model_bytes(data: bytes) -> Any:
    """A model from the bytes of a model file (shipped by the driver, so nodes need no copy): a
    :class:`PackageModel` (no torch on the node) or a ``SampledClassifier`` (loads torch)."""
    if is_package(data):
        return PackageModel(data, device="cpu")
    from sampler.model import SampledClassifier

    return SampledClassifier.load(data)


def embedder_device(model: Any, device: str) -> str:
    """The device a replica's embedder really runs on (``auto`` resolved on the replica's node)."""
    if isinstance(model, PackageModel):
        return package_device(device)
    from streamer.inference import resolve_device

    return str(resolve_device(device))


def make_embedder(model: Any, engine: str, device: str, *, max_batch: int = 64, threads: int | None = None) -> Embedder:
    """The local embedder a replica wraps: one of ``streamer.inference.EMBEDDERS``, warmed. A
    package runs on ONNX Runtime whatever ``engine`` says (that names a torch model's backend)."""
    from streamer.inference import EMBEDDERS, resolve_backend

    if isinstance(model, PackageModel):
        dev = package_device(device)
        embedder = EMBEDDERS["onnx"](model, dev, max_batch=max_batch, threads=threads)
    else:
        from streamer.inference import resolve_device

        dev = resolve_device(device)
        model = model.eval().to(dev)
        embedder = EMBEDDERS[resolve_backend(engine, dev)](model, dev, max_batch=max_batch)
    embedder.warm_up()
    return embedder


def _frames_in(requests: list[np.ndarray]) -> int:
    return sum(len(r) for r in requests)


@serve.deployment(name=DEPLOYMENT_NAME)
class EmbedderReplica:
    """One replica: a warmed embedder behind a cross-stream batch queue.

    Args:
        model_bytes: the model file's bytes.
        engine, device, threads: which embedder, where, with how many threads.
        max_batch_frames, batch_wait_s: the batch queue's size (frames) and wait.
        report_interval: seconds between reports to the cluster's state actor (0: every batch).
    """

    def __init__(
        self,
        model_bytes: bytes,
        *,
        engine: str,
        device: str,
        threads: int,
        max_batch_frames: int,
        batch_wait_s: float,
        report_interval: float,
    ) -> None:
        model = load_model_bytes(model_bytes)
        if "torch" in sys.modules:  # a torch model
            sys.modules["torch"].set_num_threads(threads)
        # every bucket warmed
        self.embedder = make_embedder(model, engine, device, max_batch=max_batch_frames, threads=threads)
        self.size = model.input_size if isinstance(model, PackageModel) else model.config.input_size
        # @serve.batch wraps the method in an object with these setters; Ray's stubs do not say so.
        self.embed.set_max_batch_size(max_batch_frames)  # type: ignore[attr-defined]
        self.embed.set_batch_wait_timeout_s(batch_wait_s)  # type: ignore[attr-defined]
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        self.actor_name = ray.get_runtime_context().get_actor_name()
        self.report_interval = report_interval
        self._last_report = 0.0
        self.figures = {
            "requests": 0,
            "frames": 0,
            "batches": 0,
            "busy_s": 0.0,
            "in_flight": 0,
            "pid": os.getpid(),
            "actor": self.actor_name,
            "node": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "device": embedder_device(model, device),  # where it really runs, not what was asked
            "engine": self.embedder.name,
            "t_start": time.time(),
        }
        self._state: Any = None  # the state actor, looked up on the first report
        self._report(force=True)

    async def __call__(self, frames: np.ndarray, exit_now: bool = False) -> dict[str, Any]:
        """Embed one window's picked frames: uint8 (n, S, S) -> {"embedding": float32 (n, E), "replica": id}.

        ``exit_now`` (an injected fault, :class:`~streamer.cluster.faults.Faults`): the replica's
        process exits at once, holding this request and any other in flight.
        """
        if exit_now:
            log.warning(
                "replica %s told to exit while holding %d request(s)", self.replica, self.figures["in_flight"] + 1
            )
            os._exit(1)
        self.figures["in_flight"] += 1
        self._report(force=self.report_interval == 0)
        try:
            return await self.embed(frames)
        finally:
            self.figures["in_flight"] -= 1

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, batch_size_fn=_frames_in)
    async def embed(self, requests: list[np.ndarray]) -> list[dict[str, Any]]:
        sizes = [len(r) for r in requests]
        t0 = time.perf_counter()
        emb = await asyncio.to_thread(self._run, np.concatenate(requests))
        busy = time.perf_counter() - t0
        self.figures["requests"] += len(requests)
        self.figures["frames"] += len(emb)
        self.figures["batches"] += 1
        self.figures["busy_s"] += busy
        self._report()
        out, start = [], 0
        for n in sizes:
            out.append(
                {
                    "embedding": emb[start : start + n],
                    "replica": self.replica,
                    "batch_frames": len(emb),
                    "compute_ms": 1000.0 * busy,
                }
            )
            start += n
        return out

    def _run(self, batch: np.ndarray) -> np.ndarray:
        emb = self.embedder.embed(batch)
        return np.asarray(emb, np.float32)

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_report < self.report_interval:
            return
        self._last_report = now
        try:
            if self._state is None:
                self._state = ray.get_actor(STATE_ACTOR, namespace=NAMESPACE)
            self._state.replica_report.remote(self.replica, dict(self.figures))
        except ValueError:  # no state actor (a deployment used on its own): nothing to report to
            pass


_RETRYABLE = (RayActorError, ActorDiedError, ActorUnavailableError, GetTimeoutError, TimeoutError)


class RemoteEmbedder:
    """``embedder(frames uint8 (N, S, S)) -> float32 (N, E)`` through the Serve pool.

    Blocking: call it from a worker thread (the pipeline runs the engine in one).

    Args:
        handle: the deployment's handle.
        timeout: seconds one request may take before it is sent again.
        retries: times a failed or timed-out request is sent again.
        max_frames: most frames in one request (the deployment's ``max_batch_frames``).

    Attributes:
        retries_done: requests sent again so far (a replica died or was too slow).
        calls: (replica id, round trip ms) of each request since the caller last cleared it.
        wire: requests sent and the array bytes they carried each way (frames to the pool,
            embeddings back; Ray's framing and pickle headers not included).
        exit_on_request: an injected fault: the n-th request sent (from 1) tells its replica to exit.
    """

    name = "serve"
    buckets: tuple[int, ...] = ()  # the replicas bucket their own batches
    shapes_seen: set[tuple[int, ...]] = set()

    def warm_up(self) -> float:
        """Nothing to warm here: each replica warmed its buckets when it started."""
        return 0.0

    def __init__(
        self, handle: Any, *, timeout: float, retries: int, max_frames: int = 64, exit_on_request: int | None = None
    ) -> None:
        self.handle = handle
        self.exit_on_request = exit_on_request
        self.sent = 0
        self.max_frames = max_frames  # the replicas' batch limit: larger requests are split
        self.timeout = timeout
        self.retries = retries
        self.retries_done = 0
        self.calls: list[tuple[str, float]] = []
        self.wire = {"requests": 0, "bytes_to_pool": 0, "bytes_from_pool": 0}

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) > self.max_frames:  # one request may not exceed a replica's batch
            return np.concatenate([self(batch[i : i + self.max_frames]) for i in range(0, len(batch), self.max_frames)])
        frames = np.ascontiguousarray(batch, dtype=np.uint8)
        for attempt in range(self.retries + 1):
            t0 = time.perf_counter()
            self.sent += 1
            try:
                out = self.handle.remote(frames, exit_now=self.sent == self.exit_on_request).result(
                    timeout_s=self.timeout
                )
            except _RETRYABLE as exc:
                if attempt == self.retries:
                    raise
                self.retries_done += 1
                log.warning(
                    "embedding request failed (%s: %s); sending it again (%d/%d)",
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                    attempt + 1,
                    self.retries,
                )
                time.sleep(min(0.1 * 2**attempt, 2.0))
                continue
            self.calls.append((out["replica"], 1000.0 * (time.perf_counter() - t0)))
            self.wire["requests"] += 1
            self.wire["bytes_to_pool"] += frames.nbytes
            self.wire["bytes_from_pool"] += out["embedding"].nbytes
            return np.array(out["embedding"])  # a writable copy of the reply
        raise AssertionError("unreachable")

    embed = __call__  # the streamer.inference.Embedder protocol
