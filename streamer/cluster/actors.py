"""The Ray actors of a cluster run: one per stream, and one that keeps the cluster's state.

A :class:`StreamActor` runs the single-process pipeline (``streamer.pipeline.Pipeline``) for one
source: source -> windows -> sampler on its CPU, the picked frames to the embedder pool
(:class:`~streamer.cluster.serve.RemoteEmbedder`), then pooling, head and the MQTT sink, with the
same topics and payloads as ``das-stream run``. Each prediction also says which replica embedded
its frames (``replica``), the request's round trip (``rtt_ms``) and the requests sent again
(``retries``); consumers that do not know these fields ignore them.

Restarts: Ray restarts a stream actor that died and re-runs its ``run`` call. The new incarnation
asks the :class:`StateActor` for the last checkpoint of its stream (written before every
prediction is published and with every stats message), reconnects its source, and goes on with the
next window number and sequence number. Its stats keep counting from the checkpoint; the frames
that were waiting in a window of the dead incarnation are counted as dropped, and the gap is
published in ``extra``: ``restarts``, ``gap_s`` (time from the last checkpoint to the restart)
and ``lost_in_restart`` (those frames).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import ray

from sinks.messages import Prediction, Stats

from ..inference import InferenceEngine, WindowResult
from ..pipeline import Pipeline, PipelineSettings
from .serve import NAMESPACE, STATE_ACTOR, RemoteEmbedder, load_model_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterPrediction(Prediction):
    """A :class:`~sinks.messages.Prediction` plus where its embeddings came from.

    Attributes:
        replica: id of the Serve replica that embedded the window's new picks (None when every
            pick was already embedded for an overlapping window).
        rtt_ms: round trip of the embedding request(s), stream actor -> replica -> back.
        retries: requests for this window that were sent again (a replica died or was slow).
    """

    replica: str | None = None
    rtt_ms: float = 0.0
    retries: int = 0


@dataclass(frozen=True)
class ClusterResult(WindowResult):
    replica: str | None = None
    rtt_ms: float = 0.0
    retries: int = 0


class ClusterEngine(InferenceEngine):
    """The single-process engine with the backbone replaced by the Serve pool."""

    def __init__(self, model, embedder: RemoteEmbedder, *, max_embed_batch: int) -> None:
        super().__init__(model, device="cpu", embedder=embedder, max_embed_batch=max_embed_batch)

    def _process(self, windows, limits=None):  # on the worker thread, as the embedder's calls
        emb: RemoteEmbedder = self.embedder
        emb.calls.clear()
        retries_before = emb.retries_done
        results = super()._process(windows, limits or {})
        replicas = sorted({r for r, _ in emb.calls})
        extra = dict(
            replica=",".join(replicas) or None,
            rtt_ms=round(sum(ms for _, ms in emb.calls), 2),
            retries=emb.retries_done - retries_before,
        )
        return [
            ClusterResult(**{f.name: getattr(r, f.name) for f in dataclasses.fields(WindowResult)}, **extra)
            for r in results
        ]


class OffsetSource:
    """A source whose sequence numbers start at ``offset`` (a restarted stream goes on numbering)."""

    def __init__(self, source: Any, offset: int) -> None:
        self._source = source
        self._offset = offset
        self.name = source.name

    @property
    def counters(self) -> dict[str, int]:
        return self._source.counters

    def counts(self) -> Any:
        return self._source.counts()

    async def __aenter__(self) -> OffsetSource:
        await self._source.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> Any:
        return await self._source.__aexit__(*exc)

    async def __aiter__(self):
        async for frame in self._source:
            yield dataclasses.replace(frame, seq=frame.seq + self._offset) if self._offset else frame


_COUNTS = ("frames_in", "frames_forwarded", "frames_skipped", "frames_dropped", "windows")


class ClusterPipeline(Pipeline):
    """The pipeline of one stream actor: adds the replica fields, checkpoints, and restart offsets."""

    def __init__(self, *, state: Any, resume: dict[str, Any] | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = state
        self.resume = resume or {}
        self.window_offset = int(self.resume.get("next_window", 0))
        self.next_seq = int(self.resume.get("next_seq", 0))
        self.restart_extra: dict[str, Any] = {}
        if resume:
            lost = int(
                resume["frames_in"] - resume["frames_forwarded"] - resume["frames_skipped"] - resume["frames_dropped"]
            )
            self.restart_extra = {
                "restarts": int(resume["restarts"]),
                "gap_s": round(float(resume["gap_s"]), 3),
                "lost_in_restart": int(resume.get("lost_in_restart", 0)) + lost,
            }
        self.base = {k: int(self.resume.get(k, 0)) for k in _COUNTS}
        self.base["frames_dropped"] += int(self.restart_extra.get("lost_in_restart", 0)) - int(
            self.resume.get("lost_in_restart", 0)
        )
        self.base["frames_embedded"] = int(self.resume.get("frames_embedded", 0))
        self.base["retries"] = int(self.resume.get("retries", 0))
        self.replicas: dict[str, int] = dict(self.resume.get("replicas", {}))
        self.rtt_ms: list[float] = []

    def _prediction(self, res: WindowResult) -> Prediction:
        """The prediction about to be published, with the replica fields; checkpoints first, so a
        crash between the two skips a window number and never reuses one."""
        pred = super()._prediction(res)
        for replica in (getattr(res, "replica", None) or "").split(","):
            if replica:
                self.replicas[replica] = self.replicas.get(replica, 0) + 1
        if getattr(res, "rtt_ms", 0.0):
            self.rtt_ms.append(res.rtt_ms)
        self.next_seq = max(self.next_seq, res.window.frames[-1].seq + 1)
        fields = {f.name: getattr(pred, f.name) for f in dataclasses.fields(Prediction)}
        fields["window"] = pred.window + self.window_offset
        self._checkpoint(next_window=fields["window"] + 1)
        extra = {k: getattr(res, k) for k in ("replica", "rtt_ms", "retries") if hasattr(res, k)}
        return ClusterPrediction(**fields, **extra)

    def _snapshot(self, st: Any, *, final: bool) -> Stats:
        s = super()._snapshot(st, final=final)
        emb: RemoteEmbedder = self.engine.embedder
        extra = dict(s.extra)
        extra["frames_embedded"] = extra.get("frames_embedded", 0) + self.base["frames_embedded"]
        extra.update(
            self.restart_extra,
            retries=emb.retries_done + self.base["retries"],
            replicas=dict(self.replicas),
            wire=dict(emb.wire),
        )
        s = dataclasses.replace(s, **{k: getattr(s, k) + self.base[k] for k in _COUNTS}, extra=extra)
        self._checkpoint(stats=s)
        return s

    def _checkpoint(self, *, next_window: int | None = None, stats: Stats | None = None) -> None:
        st = self.streams[0]
        counts = {k: getattr(st.stats, k) + self.base[k] for k in _COUNTS}
        ckpt = {
            **counts,
            "frames_embedded": st.stats.frames_embedded + self.base["frames_embedded"],
            "retries": self.engine.embedder.retries_done + self.base["retries"],
            "next_seq": self.next_seq,
            "replicas": dict(self.replicas),
            "t": time.time(),
            "lost_in_restart": int(self.restart_extra.get("lost_in_restart", 0)),
            "rtt_ms": self.rtt_ms[-256:],
        }
        if next_window is not None:
            ckpt["next_window"] = next_window
        if stats is not None:
            ckpt["stats"] = stats.to_dict()
        self.state.checkpoint.remote(st.source.name, ckpt)


@dataclass(frozen=True)
class StreamSettings:
    """What a stream actor needs besides its source spec (built by the driver from ClusterConfig)."""

    run: Any  # streamer.config.RunConfig: source options, queues, MQTT
    policy: str
    max_batch_frames: int
    request_timeout: float
    request_retries: int
    log_level: str


@ray.remote(num_cpus=0)
class StateActor:
    """Checkpoints and figures of every stream and replica (``das-stream cluster status`` reads them)."""

    def __init__(self) -> None:
        self.t_start = time.time()
        self.streams: dict[str, dict[str, Any]] = {}
        self.replicas: dict[str, dict[str, Any]] = {}

    def reset(self, keep_replicas: bool) -> None:
        """A new run: forget the streams (and the replicas unless the pool is kept)."""
        self.t_start = time.time()
        self.streams.clear()
        if not keep_replicas:
            self.replicas.clear()

    def stream_started(self, name: str, pid: int) -> dict[str, Any] | None:
        """Register an incarnation; return the last checkpoint when this is a restart."""
        prev = self.streams.get(name)
        entry = {"pid": pid, "restarts": 0, "gap_s": 0.0, "t_started": time.time()}
        if prev is None:
            self.streams[name] = entry
            return None
        ckpt = dict(prev.get("ckpt") or {})
        gap = time.time() - float(ckpt.get("t", prev["t_started"]))
        entry.update(restarts=prev["restarts"] + 1, gap_s=prev["gap_s"] + gap, ckpt=prev.get("ckpt"))
        self.streams[name] = entry
        ckpt.setdefault("next_window", ckpt.get("next_window", 0))
        return {**{k: 0 for k in _COUNTS}, **ckpt, "restarts": entry["restarts"], "gap_s": entry["gap_s"]}

    def checkpoint(self, name: str, ckpt: dict[str, Any]) -> None:
        entry = self.streams.setdefault(name, {"pid": None, "restarts": 0, "gap_s": 0.0, "t_started": time.time()})
        old = entry.get("ckpt") or {}
        merged = {**old, **ckpt}
        if "next_window" not in ckpt and "next_window" in old:
            merged["next_window"] = old["next_window"]
        entry["ckpt"] = merged

    def replica_report(self, replica: str, figures: dict[str, Any]) -> None:
        self.replicas[replica] = {**figures, "t": time.time()}

    def snapshot(self) -> dict[str, Any]:
        return {"t_start": self.t_start, "now": time.time(), "streams": self.streams, "replicas": self.replicas}


@ray.remote
class StreamActor:
    """One stream: source -> windows -> sampler -> (Serve pool) -> head -> MQTT.

    Args:
        spec: the source spec; name: the stream id.
        model_ref: [ObjectRef of the model file's bytes] (nested, so the driver keeps owning it).
        settings: queues, MQTT and request settings.
        handle: the embedder deployment's handle.
    """

    def __init__(self, spec: str, name: str, model_ref: list, settings: StreamSettings, handle: Any) -> None:
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.spec, self.name, self.settings, self.handle = spec, name, settings, handle
        self.model = load_model_bytes(ray.get(model_ref[0]))  # a package, or a torch model (loads torch)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
        self.pipeline: ClusterPipeline | None = None
        self._stop_asked = False

    def pid(self) -> int:
        return os.getpid()

    async def run(self) -> dict[str, Any]:
        """Run the stream until its source ends or :meth:`stop`; return its final stats (as a dict)."""
        from sources.spec import parse_source
        from streamer.app import build_sinks

        state = ray.get_actor(STATE_ACTOR, namespace=NAMESPACE)
        resume = await state.stream_started.remote(self.name, os.getpid())
        if resume:
            log.warning(
                "stream %s restarted (restart %d, %.1f s since its last checkpoint)",
                self.name,
                resume["restarts"],
                resume["gap_s"],
            )
        run = self.settings.run
        embedder = RemoteEmbedder(
            self.handle,
            timeout=self.settings.request_timeout,
            retries=self.settings.request_retries,
            max_frames=self.settings.max_batch_frames,
        )
        engine = ClusterEngine(self.model, embedder, max_embed_batch=self.settings.max_batch_frames)
        source = parse_source(
            self.spec,
            name=self.name,
            speed=run.speed,
            pacing=run.pacing,
            loop=run.loop,
            gray=True,
            size=engine.input_size,
        )
        source = OffsetSource(source, int((resume or {}).get("next_seq", 0)))
        mqtt_id = f"{run.client_id or 'das-stream-cluster'}-{self.name}"
        sinks = build_sinks(dataclasses.replace(run, client_id=mqtt_id)) if run.mqtt else []
        settings = PipelineSettings(
            stride=run.stride or engine.num_frames,
            frame_queue=run.frame_queue,
            window_queue=run.window_queue,
            max_batch_windows=run.max_batch_windows,
            stats_interval=run.stats_interval,
        )
        self.pipeline = ClusterPipeline(
            sources=[(source, self.settings.policy)],
            engine=engine,
            sinks=sinks,
            settings=settings,
            state=state,
            resume=resume,
        )
        if self._stop_asked:
            self.pipeline.stop()
        summary = await self.pipeline.run()
        final = summary.final[self.name].to_dict()
        if summary.errors:
            final["extra"]["error"] = str(summary.errors[0])
        return final

    async def clear_latency(self) -> int:
        """Forget the latency samples so far (a benchmark starts its own count); frames in so far."""
        if self.pipeline is None:
            return 0
        st = self.pipeline.streams[0].stats
        st.latency_ms.clear()
        st.close_latency_ms.clear()
        return st.frames_in

    async def frames_in(self) -> int:
        return 0 if self.pipeline is None else self.pipeline.streams[0].stats.frames_in

    async def stop(self) -> None:
        """Ask for a clean stop: the last window is flushed and the final stats published."""
        self._stop_asked = True
        if self.pipeline is not None:
            self.pipeline.stop()
