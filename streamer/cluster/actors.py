"""The Ray actors of a cluster run: one per stream, and one that keeps the cluster's state.

A :class:`StreamActor` runs the single-process pipeline (``streamer.pipeline.Pipeline``) for one
source, built exactly as ``das-stream run`` builds it (``streamer.app.pipeline_settings``): source
-> resampling to the model's frame rate -> windows -> sampler on its CPU, the picked frames to the
embedder pool (:class:`~streamer.cluster.serve.RemoteEmbedder`), then pooling, head and the sinks,
with the same topics and payloads as ``run``. Each prediction also says which replica embedded its
window's frames (``replica``), that request's round trip (``rtt_ms``) and how often it was sent
again (``retries``): the window's own figures, which add up to the stream's totals.

Checkpoints: before any sink sees a prediction, the stream's checkpoint is in the
:class:`StateActor` (awaited): the window number, the frame to resume from, and the counters of
everything decided up to that window. A crash between checkpoint and publish therefore loses that
one window and never publishes a window number twice.

Restarts: Ray restarts a stream actor that died and re-runs its ``run`` call. The new incarnation
reads the checkpoint and

- resumes a replay that ends (``video:``/``dicom:`` without loop, ``synthetic:?frames=N``) at the
  first frame no published window has decided: no frame is classified twice or counted twice;
- reconnects a live source (and an endless replay) and goes on numbering its frames; the frames
  the dead incarnation had taken in but not decided are counted as dropped (``lost_in_restart``);
- numbers its windows on from the checkpoint, and its first prediction says what happened:
  ``gap_before: true``, ``gap_ms`` (last frame before the restart to the first after it) and
  ``restarted: true``;
- goes on counting from the checkpoint (the sinks' delivery counters included); ``extra`` holds
  ``restarts``, ``gap_s`` (time from the last checkpoint to each restart, summed) and
  ``lost_in_restart``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import ray

from sinks.messages import Prediction, Stats
from sources.base import PacedSource
from sources.synthetic import SyntheticSource

from ..inference import InferenceEngine, WindowResult
from ..pipeline import Pipeline
from ..stats import StreamStats
from ..window import Window
from .faults import Faults
from .serve import NAMESPACE, STATE_ACTOR, RemoteEmbedder, load_model_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterPrediction(Prediction):
    """A :class:`~sinks.messages.Prediction` plus where its embeddings came from.

    Attributes:
        replica: id of the Serve replica that embedded the window's new picks (None when every
            pick was already embedded for an overlapping window).
        rtt_ms: round trip of this window's embedding request, stream actor -> replica -> back.
        retries: times this window's request was sent again (a replica died or was slow).
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
    """The single-process engine with the backbone replaced by the Serve pool.

    Each window's new picks go to the pool in a request of their own, so a window's ``replica``,
    ``rtt_ms`` and ``retries`` are its own, and they add up to the stream's totals.

    Attributes:
        retire_only: windows with no frames (they only retire frames, and are never published),
            in the order processed; the stream's checkpoint takes them in.
    """

    def __init__(self, model, embedder: RemoteEmbedder, *, max_embed_batch: int) -> None:
        super().__init__(model, device="cpu", embedder=embedder, max_embed_batch=max_embed_batch)
        self._figures: dict[int, dict[str, Any]] = {}  # id(window) -> its request figures
        self.retire_only: deque[Window] = deque()

    @property
    def remote(self) -> RemoteEmbedder:
        return cast(RemoteEmbedder, self.embedder)

    def _classify(self, windows, **limits):
        """As the engine classifies, one window at a time: each window's embedding requests are its
        own (the frame ``allowance`` of the call is shared out in order)."""
        emb = self.remote
        allowance = limits.pop("allowance", None)
        out = []
        for w in windows:
            calls, retries = len(emb.calls), emb.retries_done
            left = None if allowance is None else max(0, allowance - sum(r.frames_embedded for r in out))
            out += super()._classify([w], allowance=left, **limits)
            mine = emb.calls[calls:]
            self._figures[id(w)] = dict(
                replica=",".join(sorted({r for r, _ in mine})) or None,
                rtt_ms=round(sum(ms for _, ms in mine), 2),
                retries=emb.retries_done - retries,
            )
        return out

    def _process(self, windows, limits):  # on the worker thread, as the embedder's calls
        self.embedder.calls.clear()
        self._figures.clear()
        results = super()._process(windows, limits)
        self.retire_only.extend(w for w in windows if not w.frames)
        none = dict(replica=None, rtt_ms=0.0, retries=0)
        return [
            ClusterResult(
                **{f.name: getattr(r, f.name) for f in dataclasses.fields(WindowResult)},
                **self._figures.get(id(r.window), none),
            )
            for r in results
        ]


def resumable(source: Any, loop: bool) -> bool:
    """Whether a restarted stream re-reads ``source`` from the checkpointed frame: a replay that
    ends (a file without ``loop``, ``synthetic:?frames=N``). Frames before it are read again without
    pacing and skipped, so an endless replay is treated as live instead."""
    if not isinstance(source, PacedSource) or loop:
        return False
    return not isinstance(source, SyntheticSource) or source._total is not None


class StreamSource:
    """The stream actor's view of its source (attributes it does not set are the source's own).

    Args:
        source: the source ``parse_source`` made.
        seq_offset: added to every sequence number (a restarted live stream goes on numbering).
        start_at: a replay's first frame to release; frames before it are read and skipped
            without pacing, their times handed to ``on_skip`` (the resampler's grid goes on).
        on_first: called with the first frame's capture time (the run's duration starts there).
    """

    def __init__(
        self,
        source: Any,
        *,
        seq_offset: int = 0,
        start_at: int = 0,
        on_skip: Callable[[float], None] | None = None,
        on_first: Callable[[float], None] | None = None,
    ) -> None:
        self._source = source
        self._offset = seq_offset
        self._on_first = on_first
        self.name = source.name
        if start_at:
            produce = source._produce  # the replay's reader: (seq, media time, image) in order

            def skipping(stop):
                for item in produce(stop):
                    if item[0] >= start_at:
                        yield item
                    elif on_skip is not None:
                        on_skip(item[1])

            source._produce = skipping

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    async def __aenter__(self) -> StreamSource:
        await self._source.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> Any:
        return await self._source.__aexit__(*exc)

    async def __aiter__(self):
        async for frame in self._source:
            if self._on_first is not None:
                self._on_first(frame.t_capture)
                self._on_first = None
            yield dataclasses.replace(frame, seq=frame.seq + self._offset) if self._offset else frame


class _LeftOut:
    """The stream's resampler, recording which frames it leaves out (for the checkpoint's counts)."""

    def __init__(self, resampler: Any) -> None:
        self._resampler = resampler
        self.seqs: deque[int] = deque()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._resampler, name)

    def keep(self, frame: Any) -> bool:
        kept = self._resampler.keep(frame)
        if not kept:
            self.seqs.append(frame.seq)
        return kept


class Relay:
    """A pipeline observer that keeps what the driver's web view and metrics need (``--web``,
    ``--metrics`` of a cluster run) until the driver fetches it (:meth:`StreamActor.observe`):
    the newest frame, the predictions since the last fetch with the frames of the newest window,
    and the newest stats. Memory stays bounded when nobody fetches."""

    def __init__(self) -> None:
        self.frame: Any = None
        self.frames_seen = 0
        self.windows: deque[dict[str, Any]] = deque(maxlen=256)
        self.ended: dict[str, str | None] = {}
        self.window_frames: tuple = ()
        self.stats: dict[str, Any] | None = None

    def on_frame(self, stream: str, frame: Any) -> None:
        self.frame = frame
        self.frames_seen += 1

    def on_window(self, result: WindowResult, prediction: Prediction) -> None:
        self.windows.append(
            {
                "prediction": prediction.to_dict(),
                "t_close": result.window.t_close,
                "selected": tuple(result.selected),
                "scores": tuple(result.scores),
                **{k: getattr(result, k) for k in ("frames_used", "exit", "k_max")},
            }
        )
        self.window_frames = result.window.frames

    def on_stats(self, stats: Stats) -> None:
        self.stats = stats.to_dict()

    def on_stream_end(self, stream: str, error: BaseException | None) -> None:
        self.ended[stream] = None if error is None else str(error)

    def take(self) -> dict[str, Any]:
        out = {
            "frame": self.frame,
            "frames_seen": self.frames_seen,
            "windows": list(self.windows),
            "window_frames": self.window_frames if self.windows else (),
            "stats": self.stats,
            "ended": dict(self.ended),
        }
        self.windows.clear()
        self.frame, self.stats = None, None
        return out


# The counters a checkpoint carries and a restarted incarnation goes on from.
_COUNTS = ("frames_in", "frames_forwarded", "frames_skipped", "frames_dropped", "frames_resampled_out", "windows")
_GAUGES = ("buffered", "undelivered")  # sink counters that are levels, not totals


class Checkpointer:
    """The first sink of a stream actor: the checkpoint is in the state actor before any other sink
    sees the prediction (so a crash in between skips a window number and never reuses one), and
    with every stats message. Also where an injected ``exit_after_checkpoint`` fault fires."""

    def __init__(self, pipeline: ClusterPipeline, faults: Faults) -> None:
        self.pipeline = pipeline
        self.faults = faults

    async def __aenter__(self) -> Checkpointer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def publish_prediction(self, p: Prediction) -> None:
        await self.pipeline.checkpoint(next_window=p.window + 1)
        if p.window == self.faults.exit_after_checkpoint:
            await self.pipeline.sinks_drained(timeout=10.0)
            log.warning("stream %s told to exit between checkpoint and publish of window %d", p.stream, p.window)
            os._exit(1)

    async def publish_stats(self, s: Stats) -> None:
        await self.pipeline.checkpoint(stats=s)


class ClusterPipeline(Pipeline):
    """The pipeline of one stream actor: the replica fields, checkpoints, and what a restart goes on from.

    Args:
        state: the state actor.
        resume: the last checkpoint when this incarnation is a restart (None: the first).
        replay: the source is re-read from the checkpointed frame (see :func:`resumable`).
        faults: injected failures.
        sinks, **kwargs: as for :class:`~streamer.pipeline.Pipeline` (one source).
    """

    def __init__(
        self,
        *,
        state: Any,
        resume: dict[str, Any] | None,
        replay: bool = False,
        faults: Faults = Faults(),
        sinks: list,
        **kwargs: Any,
    ) -> None:
        super().__init__(sinks=[Checkpointer(self, faults), *sinks], **kwargs)
        self.state = state
        self.replay = replay
        ckpt = dict(resume or {})
        self.base = {k: int(ckpt.get(k, 0)) for k in (*_COUNTS, "frames_embedded", "retries")}
        # Frames the dead incarnation took in but never decided: lost (a replay re-reads them: 0).
        lost = self.base["frames_in"] - sum(self.base[k] for k in _COUNTS[1:5])
        self.base["frames_dropped"] += lost
        self.restart_extra: dict[str, Any] = {}
        if resume:
            self.restart_extra = {
                "restarts": int(resume["restarts"]),
                "gap_s": round(float(resume["gap_s"]), 3),
                "lost_in_restart": int(ckpt.get("lost_in_restart", 0)) + lost,
            }
        self.window_offset = int(ckpt.get("next_window", 0))
        self.first_seq = int(ckpt.get("resume_seq", 0)) if replay else 0  # the first frame this incarnation reads
        self.next_seq = int(ckpt.get("next_seq", 0))  # a live stream's numbering goes on from here
        self.sinks_base: dict[str, dict[str, int]] = ckpt.get("sinks", {})
        self.replicas: dict[str, int] = dict(ckpt.get("replicas", {}))
        self.rtt_ms: list[float] = []
        self.t_before_restart: float | None = (
            float(ckpt.get("t_last") or ckpt.get("t") or time.time()) if resume else None
        )
        # What the published windows decided, in publish order: the checkpoint's counts.
        st = self.streams[0]
        self.settled = StreamStats(stream=st.source.name, num_frames=self.engine.num_frames)
        self.decided_to = self.first_seq  # every frame before it is decided
        self.resampled_before = 0  # frames before decided_to the resampler left out (this incarnation)
        self.t_last: float | None = ckpt.get("t_last")
        if st.resampler is not None:
            st.resampler = cast(Any, _LeftOut(st.resampler))

    @property
    def cluster_engine(self) -> ClusterEngine:
        return cast(ClusterEngine, self.engine)

    def skipped_frame(self, t: float) -> None:
        """A replayed frame before the resume point, read again: the resampler's grid goes on over it."""
        if self.streams[0].resampler is not None:
            self.streams[0].resampler.grid.count(t)

    def _settle(self, window: Window, picked: tuple[int, ...], embedded: int, exit: str | None = None) -> None:
        self.settled.window_done(window, picked, embedded, exit=exit)
        if window.retire:
            self.decided_to = max(self.decided_to, max(window.retire) + 1)

    def _prediction(self, res: WindowResult) -> Prediction:
        """The prediction about to be published, with the replica fields, the window number going
        on from the checkpoint, and the restart said on the first one after a restart."""
        retire_only = self.cluster_engine.retire_only
        while retire_only and retire_only[0].index <= res.window.index:  # decided before this window
            self._settle(retire_only.popleft(), (), 0)
        self._settle(res.window, res.selected, res.frames_embedded, res.exit)
        while retire_only and retire_only[0].index == res.window.index + 1:  # between this window and the next
            self._settle(retire_only.popleft(), (), 0)
        resampler = self.streams[0].resampler
        if isinstance(resampler, _LeftOut):
            while resampler.seqs and resampler.seqs[0] < self.decided_to:
                resampler.seqs.popleft()
                self.resampled_before += 1
        pred = super()._prediction(res)
        for replica in (getattr(res, "replica", None) or "").split(","):
            if replica:
                self.replicas[replica] = self.replicas.get(replica, 0) + 1
        if rtt := getattr(res, "rtt_ms", 0.0):
            self.rtt_ms.append(rtt)
        self.next_seq = max(self.next_seq, res.window.frames[-1].seq + 1)
        self.t_last = pred.t_last
        fields = {f.name: getattr(pred, f.name) for f in dataclasses.fields(Prediction)}
        fields["window"] = pred.window + self.window_offset
        if self.t_before_restart is not None:  # the first prediction since the restart
            gap_ms = max(pred.gap_ms, 1000.0 * (pred.t_first - self.t_before_restart))
            fields.update(gap_before=True, gap_ms=round(gap_ms, 2), restarted=True)
            self.t_before_restart = None
        extra = {k: getattr(res, k) for k in ("replica", "rtt_ms", "retries") if hasattr(res, k)}
        return ClusterPrediction(**fields, **extra)

    def _snapshot(self, st: Any, *, final: bool) -> Stats:
        s = super()._snapshot(st, final=final)
        emb = self.cluster_engine.remote
        extra = dict(s.extra)
        extra["frames_embedded"] = extra.get("frames_embedded", 0) + self.base["frames_embedded"]
        for key, counters in self._sink_counters().items():
            extra[key] = counters
        extra.update(
            self.restart_extra,
            retries=emb.retries_done + self.base["retries"],
            replicas=dict(self.replicas),
            wire=dict(emb.wire),
        )
        return dataclasses.replace(s, **{k: getattr(s, k) + self.base[k] for k in _COUNTS}, extra=extra)

    def _sink_counters(self) -> dict[str, dict[str, int]]:
        """The sinks' counters, their totals going on from the checkpoint."""
        out = {}
        for key, counters in self.sinks.counters().items():
            base = self.sinks_base.get(key, {})
            out[key] = {k: v + (0 if k in _GAUGES else int(base.get(k, 0))) for k, v in counters.items()}
        return out

    async def sinks_drained(self, timeout: float) -> bool:
        """Wait until no sink holds an undelivered message (True), or ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        while any(c.get("buffered", 0) for c in self.sinks.counters().values()):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def counts(self) -> dict[str, int]:
        """The counters of everything the published windows decided (what a restart goes on from)."""
        st, settled = self.streams[0], self.settled
        counts = {
            "frames_forwarded": self.base["frames_forwarded"] + settled.frames_forwarded,
            "frames_skipped": self.base["frames_skipped"] + settled.frames_skipped,
            "windows": self.base["windows"] + settled.windows,
            "frames_embedded": self.base["frames_embedded"] + settled.frames_embedded,
        }
        if self.replay:  # the frames before decided_to, each decided once
            counts["frames_in"] = self.base["frames_in"] + self.decided_to - self.first_seq
            counts["frames_resampled_out"] = self.base["frames_resampled_out"] + self.resampled_before
            counts["frames_dropped"] = (
                counts["frames_in"]
                - counts["frames_forwarded"]
                - counts["frames_skipped"]
                - counts["frames_resampled_out"]
            )
        else:  # everything taken in so far: what no window decided yet is lost in a crash
            s = st.stats
            overflow = st.source.counts().overflow
            counts["frames_in"] = self.base["frames_in"] + s.frames_in + overflow
            counts["frames_resampled_out"] = self.base["frames_resampled_out"] + s.frames_resampled_out
            counts["frames_dropped"] = self.base["frames_dropped"] + s.frames_dropped + overflow
        return counts

    async def checkpoint(self, *, next_window: int | None = None, stats: Stats | None = None) -> None:
        """Write the stream's checkpoint to the state actor and wait until it is there."""
        ckpt: dict[str, Any] = {"t": time.time()}
        if stats is not None:
            ckpt["stats"] = stats.to_dict()
        if next_window is not None:
            ckpt.update(
                self.counts(),
                next_window=next_window,
                resume_seq=self.decided_to,
                next_seq=self.next_seq,
                t_last=self.t_last,
                retries=self.cluster_engine.remote.retries_done + self.base["retries"],
                replicas=dict(self.replicas),
                sinks=self._sink_counters(),
                lost_in_restart=int(self.restart_extra.get("lost_in_restart", 0)),
                rtt_ms=self.rtt_ms[-256:],
            )
        await self.state.checkpoint.remote(self.streams[0].source.name, ckpt)


@dataclass(frozen=True)
class StreamSettings:
    """What a stream actor needs besides its source spec (built by the driver from ClusterConfig)."""

    run: Any  # streamer.config.RunConfig: the `run` settings of every stream
    max_batch_frames: int
    request_timeout: float
    request_retries: int
    log_level: str
    observe: bool = False  # keep a Relay for the driver's --web / --metrics
    faults: dict[str, Faults] = dataclasses.field(default_factory=dict)  # stream name -> injected faults


@ray.remote(num_cpus=0)
class StateActor:
    """Checkpoints and figures of every stream and replica (``das-stream cluster status`` reads them)."""

    def __init__(self) -> None:
        self.t_start = time.time()
        self.t_first_frame: float | None = None
        self.streams: dict[str, dict[str, Any]] = {}
        self.replicas: dict[str, dict[str, Any]] = {}

    def reset(self, keep_replicas: bool) -> None:
        """A new run: forget the streams (and the replicas unless the pool is kept)."""
        self.t_start = time.time()
        self.t_first_frame = None
        self.streams.clear()
        if not keep_replicas:
            self.replicas.clear()

    def stream_started(self, name: str, pid: int, node: str = "", node_id: str = "") -> dict[str, Any] | None:
        """Register an incarnation (its pid, node address and id); return the last checkpoint when this is a restart."""
        prev = self.streams.get(name)
        entry = {"pid": pid, "node": node, "node_id": node_id, "restarts": 0, "gap_s": 0.0, "t_started": time.time()}
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

    def first_frame(self, name: str, t: float) -> None:
        """A stream's first frame arrived (the run's ``duration`` counts from the first of all)."""
        self.t_first_frame = t if self.t_first_frame is None else min(self.t_first_frame, t)

    def replica_report(self, replica: str, figures: dict[str, Any]) -> None:
        self.replicas[replica] = {**figures, "t": time.time()}

    def snapshot(self) -> dict[str, Any]:
        return {
            "t_start": self.t_start,
            "t_first_frame": self.t_first_frame,
            "now": time.time(),
            "streams": self.streams,
            "replicas": self.replicas,
        }


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
        self.relay = Relay() if settings.observe else None
        self._stop_asked = False

    def pid(self) -> int:
        return os.getpid()

    async def run(self) -> dict[str, Any]:
        """Run the stream until its source ends or :meth:`stop`; return its final stats (as a dict)."""
        from sources.spec import parse_source
        from streamer.app import build_sinks, frame_size, overload_policy, pipeline_settings, source_options

        state = ray.get_actor(STATE_ACTOR, namespace=NAMESPACE)
        here = ray.get_runtime_context()
        resume = await state.stream_started.remote(
            self.name, os.getpid(), ray.util.get_node_ip_address(), here.get_node_id()
        )
        if resume:
            log.warning(
                "stream %s restarted (restart %d, %.1f s since its last checkpoint)",
                self.name,
                resume["restarts"],
                resume["gap_s"],
            )
        run = self.settings.run
        faults = Faults() if resume else self.settings.faults.get(self.name, Faults())  # the first incarnation's
        embedder = RemoteEmbedder(
            self.handle,
            timeout=self.settings.request_timeout,
            retries=self.settings.request_retries,
            max_frames=self.settings.max_batch_frames,
            exit_on_request=faults.replica_exit_on_request,
        )
        engine = ClusterEngine(self.model, embedder, max_embed_batch=self.settings.max_batch_frames)
        source = parse_source(self.spec, name=self.name, **source_options(run, size=frame_size(engine.model)))
        ckpt = resume or {}
        replay = resumable(source, run.loop)
        source = StreamSource(
            source,
            seq_offset=0 if replay else int(ckpt.get("next_seq", 0)),
            start_at=int(ckpt.get("resume_seq", 0)) if replay else 0,
            on_skip=lambda t: self.pipeline.skipped_frame(t),
            on_first=lambda t: state.first_frame.remote(self.name, t),
        )
        mqtt_id = f"{run.client_id or 'das-stream-cluster'}-{self.name}"
        sinks = build_sinks(dataclasses.replace(run, client_id=mqtt_id))
        # As `run` builds them; the driver keeps the run's duration (from the first frame of any stream).
        settings = dataclasses.replace(pipeline_settings(run, engine.model), duration=None)
        self.pipeline = ClusterPipeline(
            sources=[(source, overload_policy(run))],
            engine=engine,
            sinks=sinks,
            settings=settings,
            state=state,
            resume=resume,
            replay=replay,
            faults=faults,
            observers=[self.relay] if self.relay is not None else [],
        )
        if self._stop_asked:
            self.pipeline.stop()
        summary = await self.pipeline.run()
        final = summary.final[self.name].to_dict()
        if summary.errors:
            final["extra"]["error"] = str(summary.errors[0])
        return final

    async def observe(self) -> dict[str, Any] | None:
        """What the relay kept since the last call (None without ``observe``)."""
        return None if self.relay is None else self.relay.take()

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
