"""Window inference: frames embedded best first until the prediction is settled, pooling + head classify.

All the work runs on the engine's own worker thread, which also owns the per-frame cache
(:class:`~streamer.inference.cache.FrameCache`): :meth:`InferenceEngine.accept` (frames as they
arrive) only enqueues, :meth:`InferenceEngine.submit` (a batch of closed windows) queues the batch
on that thread and returns a future (the pipeline's event loop awaits it, no thread parked), and
:meth:`InferenceEngine.process` does the same and waits. One call is:

1. sampler: the windows' feature-size copies -> the window model's ``order`` (one call for the
   batch), every frame best first; for samplers that look at frame features (DAS, ADPS) the
   per-frame part of the features was computed as each frame arrived, so only the motion,
   attention and ranking are left for the close;
2. rounds (:mod:`.rounds`): the next frames of every undecided window (1, 2, 4, ... k_max) that
   have no embedding yet -> the :class:`Embedder` (fixed buckets, one call per round), then
   attention pooling + MLP + softmax over each window's frames so far; a window stops when the
   model's exit rule says its prediction is settled (``confident``), at k_max frames, or when the
   call's frame allowance (``--budget``) runs out. Without an exit rule (or with
   ``early_exit=False``) this is one round of k_max frames: fixed-k inference.

The model is a *window model* (:class:`sampler.package.WindowModel`): a model package run with
ONNX Runtime and numpy (this module imports no torch), or a torch ``SampledClassifier`` (wrapped
in :class:`sampler.torch_model.TorchWindowModel`, which loads torch).

Every backbone batch size and every sampler/head batch of 1..``max_windows`` windows is run once
when the engine is built (one log line says how long), so no live window pays a first-shape cost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

from core.exit import ExitRule, rounds
from sampler.package import WindowModel, describe

from ..window import Window
from .cache import FrameCache, Key, resize_gray
from .embedders import EMBEDDERS, Embedder, resolve_backend
from .rounds import run_rounds

if TYPE_CHECKING:
    from sampler.torch_model import TorchWindowModel

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass(frozen=True)
class WindowResult:
    """What the model said about one window.

    Attributes:
        window: the window.
        selected: sequence numbers of the real frames the prediction used (the first ones of the
            sampler's best-first order), ascending.
        probs: class probabilities at exit, in the model's class order.
        frames_embedded: frames embedded for this window (used frames not already cached).
        exit: why no more frames were added: ``confident``, ``k_max`` or ``budget``
            (:mod:`.rounds`).
        k_max: the most frames the window could use (the k_max in force).
        scores: the sampler's own score of each real frame, in window order, the scores its order
            ranks by (DAS: a_base), from the window model's ``last_scores``; empty for samplers
            without one. Why these frames were picked: the web view shows it under each frame.
    """

    window: Window
    selected: tuple[int, ...]
    probs: tuple[float, ...]
    frames_embedded: int
    scores: tuple[float, ...] = ()
    exit: str = "k_max"
    k_max: int = 0

    @property
    def frames_used(self) -> int:
        """Frames the prediction pooled (the web view and the metrics show it per window)."""
        return len(self.selected)


def as_window_model(model: Any, device: str) -> WindowModel:
    """A window model as it is, or a ``SampledClassifier`` wrapped (loading torch)."""
    if hasattr(model, "card"):
        return model
    from sampler.torch_model import TorchWindowModel  # a torch model: torch is loaded already

    return TorchWindowModel(model, device)


class InferenceEngine:
    """Runs a window model on windows, embedding each frame at most once.

    Args:
        model: a window model (:class:`sampler.package.PackageModel`, a TorchWindowModel) or a
            trained ``SampledClassifier`` (put in eval mode here).
        device: "auto", "cpu" or "cuda[:N]" (for a SampledClassifier; a window model is placed
            when it is built).
        backend: the backbone's embedder: "auto" (a package: ONNX Runtime; a torch model: the
            CUDA-graph embedder on a GPU, ONNX Runtime on the CPU when installed, else eager
            torch) or a name of ``EMBEDDERS``.
        max_embed_batch: the largest backbone batch (the top bucket).
        max_windows: windows per call warmed at start (the pipeline's ``max_batch_windows``).
        embedder: a ready :class:`Embedder` to use instead of building one (e.g. the Ray Serve
            pool of ``streamer.cluster``); ``backend`` and ``max_embed_batch`` are then unused.
        threads: intra-op threads of the ONNX Runtime embedder (None: its default).
    """

    def __init__(
        self,
        model: Any,
        *,
        device: str = "auto",
        backend: str = "auto",
        max_embed_batch: int = 64,
        max_windows: int = 8,
        embedder: Embedder | None = None,
        threads: int | None = None,
    ) -> None:
        self.model = as_window_model(model, device)
        self.device = self.model.device
        m = self.model
        self.num_frames, self.k = m.num_frames, m.k
        self.feature_size, self.input_size = m.feature_size, m.input_size
        self.class_names = tuple(m.class_names)
        self.embed_dim = m.embed_dim
        self.model_name = f"{m.name} ({m.card['method']})"
        if embedder is not None:  # a backbone served elsewhere (streamer.cluster)
            self.backend, self.embedder = embedder.name, embedder
        else:
            package = m.kind == "package"
            self.backend = resolve_backend(backend, self.device, package=package)
            options = {"threads": threads} if self.backend == "onnx" else {}
            source = m if package else cast("TorchWindowModel", m).model
            self.embedder = EMBEDDERS[self.backend](source, self.device, max_batch=max_embed_batch, **options)
        self.cache = FrameCache(m.feature_size)
        # Wall time of each call's steps in ms (recent calls only): "sampler" (feature-size copies
        # still missing, features, attention, selection), "embed" (backbone on the new picks), "head".
        self.stage_ms: dict[str, deque[float]] = {name: deque(maxlen=4096) for name in ("sampler", "embed", "head")}
        # Called as fn(stage, seconds) for every stage time recorded (e.g. the Prometheus metrics);
        # called from the worker thread, so a listener must be thread-safe and quick.
        self.stage_listeners: list = []
        self._inbox: deque[tuple[str, Any]] = deque()
        self._drain_queued = False
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._worker_id = self._worker.submit(threading.get_ident).result()
        # Per-frame features on arrival for samplers that read them (DAS, ADPS).
        self.features_on_arrival = m.uses_stats
        # When a window's prediction is settled (the model's calibrated rule; none: fixed k).
        self.exit_rule = ExitRule.from_dict(m.card.get("exit"))
        self.widths = rounds(self.k)  # head widths: every round's prefix is padded to one of these
        fs = self.feature_size
        self._empty_stats = (
            m.frame_stats(np.zeros((1, fs, fs), np.uint8))[0] if m.uses_stats else np.zeros(0, np.float32)
        )
        self.warm_up_s = self.on_worker(self._warm_up, max_windows)
        log.info(
            "inference engine %s on %s warmed up in %.2f s: %s, backbone batches %s, 1-%d windows per call",
            self.backend,
            self.device,
            self.warm_up_s,
            describe(m),
            "/".join(map(str, self.embedder.buckets)),
            max_windows,
        )

    # --- threads -------------------------------------------------------------------------------
    def on_worker(self, fn: Callable[..., R], *args: Any) -> R:
        """Run ``fn(*args)`` on the worker thread (the cache's owner) and return its result."""
        if threading.get_ident() == self._worker_id:
            return fn(*args)
        return self._worker.submit(fn, *args).result()

    def accept(self, stream: str, frame) -> None:
        """Hand over a frame as it arrives (any thread; returns at once). The worker thread makes
        its feature-size copy while it is idle, so the window's close does not wait for it.
        Optional: a window makes the copies it lacks."""
        self._inbox.append((stream, frame))
        if not self._drain_queued:
            self._drain_queued = True
            self._worker.submit(self._drain)

    def _drain(self) -> None:
        self._drain_queued = False  # before reading: a frame appended from now on queues a new drain
        keys = []
        while self._inbox:
            stream, frame = self._inbox.popleft()
            try:
                self.cache.small_copy(stream, frame)
            except Exception:  # a bad frame fails the window that holds it, in process()
                continue
            keys.append((stream, frame.seq))
        if keys and self.features_on_arrival:
            self._frame_stats(keys)

    def _frame_stats(self, keys: list[Key]) -> None:
        """The sampler's per-frame features of these held copies, in one call."""
        self.cache.stats.update(zip(keys, self.model.frame_stats(np.stack([self.cache.small[k] for k in keys]))))

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    @property
    def cached(self) -> int:
        """Frames currently holding a cached embedding (for memory checks)."""
        return len(self.cache.emb)

    @property
    def held_copies(self) -> int:
        """Frames currently holding a feature-size copy (for memory checks)."""
        return len(self.cache.small)

    # --- the work ------------------------------------------------------------------------------
    def process(self, windows: list[Window], **limits: Any) -> list[WindowResult]:
        """Classify a batch of windows (any streams). Blocking, from any thread; runs on the worker.

        ``limits``: ``k_max`` (the most frames a window may use; None: the model's k),
        ``allowance`` (frames this call may embed; None: no budget) and ``early_exit`` (False:
        ignore the model's exit rule, every window uses k_max frames).

        A failed call empties the cache (its windows never retire their frames) and raises.
        """
        return self.on_worker(self._process, windows, limits)

    def submit(self, windows: list[Window], **limits: Any) -> Future[list[WindowResult]]:
        """:meth:`process` without blocking: the batch is queued on the worker and the future holds
        its results (an event loop awaits ``asyncio.wrap_future(engine.submit(...))``; no thread
        waits on it)."""
        return self._worker.submit(self._process, windows, limits)

    def _process(self, windows: list[Window], limits: dict[str, Any]) -> list[WindowResult]:
        try:
            self._drain()
            todo = [w for w in windows if w.frames]
            results = dict(zip(map(id, todo), self._classify(todo, **limits))) if todo else {}
        except BaseException:
            self._inbox.clear()
            self.cache.clear()
            raise
        out = []
        for w in windows:
            out.append(results.get(id(w)) or WindowResult(window=w, selected=(), probs=(), frames_embedded=0))
            self.cache.retire(w.stream, w.retire)
        return out

    def _classify(
        self,
        windows: list[Window],
        *,
        k_max: int | None = None,
        allowance: int | None = None,
        early_exit: bool = True,
    ) -> list[WindowResult]:
        """Order each window's frames best first, then embed them in rounds (:mod:`.rounds`)
        until each prediction is settled, uses ``k_max`` frames (None: the model's k) or the
        frame ``allowance`` of this call runs out (None: no budget)."""
        t0 = time.perf_counter()
        small, valid = self._sampler_input(windows)
        # As in SampledClassifier.forward: frames that are padding or empty (lost probe contact)
        # are left out of the pooling, so they need no embedding either.
        usable = valid & (small.reshape(len(windows), self.num_frames, -1).max(axis=2) > 0)
        stats = self._window_stats(windows) if self.features_on_arrival else None
        order = self.model.order(small, stats, usable)
        scores = getattr(self.model, "last_scores", None)  # what that order ranked by, if the model says
        if scores is not None and scores.shape != usable.shape:
            scores = None
        t1 = time.perf_counter()
        k = self.k if k_max is None else max(1, min(self.k, int(k_max)))
        rule = self.exit_rule if early_exit else ExitRule()
        counts = [0] * len(windows)
        spent = {"embed": 0.0, "head": 0.0}

        def key(b: int, t: int) -> Key:
            return (windows[b].stream, windows[b].frames[t].seq)

        def cost(b: int, positions) -> int:
            return sum(1 for t in positions if usable[b, t] and key(b, t) not in self.cache.emb)

        def embed(pairs: list[tuple[int, int]]) -> None:
            t = time.perf_counter()
            new: dict[Key, np.ndarray] = {}
            for b, pos in pairs:
                kk = key(b, pos)
                if kk not in self.cache.emb and kk not in new:
                    new[kk] = windows[b].frames[pos].image
                    counts[b] += 1
            if new:
                batch = np.stack([resize_gray(image, self.input_size) for image in new.values()])
                self.cache.emb.update(zip(new, np.asarray(self.embedder.embed(batch), np.float32)))
            spent["embed"] += time.perf_counter() - t  # the embedders return CPU arrays: CUDA work is done

        def head(rows: list[int], positions: np.ndarray, mask: np.ndarray) -> np.ndarray:
            t = time.perf_counter()
            width = next(w for w in self.widths if w >= positions.shape[1])  # a warmed shape
            emb = np.zeros((len(rows), width, self.embed_dim), np.float32)
            full_mask = np.zeros((len(rows), width), bool)
            full_mask[:, : mask.shape[1]] = mask
            for i, b in enumerate(rows):
                for j in np.flatnonzero(mask[i]):
                    emb[i, j] = self.cache.emb[key(b, int(positions[i, j]))]
            out = self.model.head(emb, full_mask)
            spent["head"] += time.perf_counter() - t
            return out

        res = run_rounds(
            order, usable, [k] * len(windows), rule, cost=cost, embed=embed, head=head, allowance=allowance
        )
        for name, s in (("sampler", t1 - t0), ("embed", spent["embed"]), ("head", spent["head"])):
            self.stage_ms[name].append(1000.0 * s)
            for listener in self.stage_listeners:
                listener(name, s)
        out = []
        for b, w in enumerate(windows):
            # The prefix the prediction reached; a window that went to k_max reports the first k
            # positions (its unusable real frames too, as the fixed-k picks always did).
            reach = k if res.exits[b] == "k_max" else len(res.used[b])
            selected = tuple(sorted(w.frames[t].seq for t in order[b, :reach] if t < len(w.frames)))
            out.append(
                WindowResult(
                    window=w,
                    selected=selected,
                    probs=tuple(float(p) for p in res.probs[b]),
                    frames_embedded=counts[b],
                    exit=res.exits[b],
                    k_max=k,
                    scores=() if scores is None else tuple(round(float(v), 4) for v in scores[b, : len(w.frames)]),
                )
            )
        return out

    def _sampler_input(self, windows: list[Window]) -> tuple[np.ndarray, np.ndarray]:
        """The windows' feature-size copies (B, T, fs, fs) uint8, zero-padded, and the (B, T) mask of real frames."""
        B, T, fs = len(windows), self.num_frames, self.feature_size
        small = np.zeros((B, T, fs, fs), np.uint8)
        valid = np.zeros((B, T), bool)
        for b, w in enumerate(windows):
            for t, frame in enumerate(w.frames):
                small[b, t] = self.cache.small_copy(w.stream, frame)
            valid[b, : len(w.frames)] = True
        return small, valid

    def _window_stats(self, windows: list[Window]) -> np.ndarray:
        """(B, T, d): the frames' per-frame features (made now for frames that lack them)."""
        missing = [(w.stream, f.seq) for w in windows for f in w.frames if (w.stream, f.seq) not in self.cache.stats]
        if missing:
            self._frame_stats(list(dict.fromkeys(missing)))
        assert self._empty_stats is not None  # the model uses per-frame features
        out = np.tile(self._empty_stats, (len(windows), self.num_frames, 1))  # padding: empty frames
        for b, w in enumerate(windows):
            if w.frames:
                out[b, : len(w.frames)] = np.stack([self.cache.stats[(w.stream, f.seq)] for f in w.frames])
        return out

    def _warm_up(self, max_windows: int) -> float:
        """Run every backbone bucket, and order + head for 1..max_windows windows (a torch model
        on a GPU also picks the faster device per count). Returns the seconds taken."""
        t0 = time.perf_counter()
        self.embedder.warm_up()
        self.model.warm_up(max_windows)
        for b in range(1, max_windows + 1):  # every round's head shape (the prefix widths)
            for width in self.widths:
                self.model.head(np.zeros((b, width, self.embed_dim), np.float32), np.ones((b, width), bool))
        return time.perf_counter() - t0
