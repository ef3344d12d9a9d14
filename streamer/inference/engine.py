"""Window inference: the sampler picks k frames, the backbone embeds only those, pooling + head classify.

All the work runs on the engine's own worker thread, which also owns the per-frame cache
(:class:`~streamer.inference.cache.FrameCache`): :meth:`InferenceEngine.accept` (frames as they
arrive) only enqueues, :meth:`InferenceEngine.submit` (a batch of closed windows) queues the batch
on that thread and returns a future (the pipeline's event loop awaits it, no thread parked), and
:meth:`InferenceEngine.process` does the same and waits. One call is three steps:

1. sampler: the windows' feature-size copies -> ``sampler.select`` (one call for the batch); for
   samplers that look at frame features (DAS, ADPS) the per-frame part of the features was
   computed as each frame arrived, so only the motion, attention and top-k are left for the close;
2. embed: the usable picks that have no embedding yet -> the :class:`Embedder` (fixed buckets);
3. head: attention pooling + MLP + softmax over each window's picks.

Every backbone batch size and every sampler/head batch of 1..``max_windows`` windows is run once
when the engine is built (one log line says how long), so no live window pays a first-shape cost.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from sampler.device import resolve_device  # the one device rule, shared with training
from sampler.features import frame_stats, with_motion
from sampler.model import SampledClassifier

from ..window import Window
from .cache import FrameCache, Key, resize_gray
from .embedders import EMBEDDERS, Embedder, resolve_backend

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass(frozen=True)
class WindowResult:
    """What the model said about one window.

    Attributes:
        window: the window.
        selected: sequence numbers of the real frames the sampler picked, ascending.
        probs: class probabilities, in the model's class order.
        frames_embedded: frames embedded for this window (picked frames not already cached).
    """

    window: Window
    selected: tuple[int, ...]
    probs: tuple[float, ...]
    frames_embedded: int


class InferenceEngine:
    """Runs a :class:`SampledClassifier` on windows, embedding each frame at most once.

    Args:
        model: the trained model (put in eval mode here).
        device: "auto", "cpu" or "cuda[:N]".
        backend: the backbone's embedder: "auto" (the CUDA-graph embedder on a GPU, ONNX Runtime
            on the CPU when installed, else eager torch) or a name of ``EMBEDDERS``.
        max_embed_batch: the largest backbone batch (the top bucket).
        max_windows: windows per call warmed at start (the pipeline's ``max_batch_windows``).
        embedder: a ready :class:`Embedder` to use instead of building one (e.g. the Ray Serve
            pool of ``streamer.cluster``); ``backend`` and ``max_embed_batch`` are then unused.
    """

    def __init__(
        self,
        model: SampledClassifier,
        *,
        device: str = "auto",
        backend: str = "auto",
        max_embed_batch: int = 64,
        max_windows: int = 8,
        embedder: Embedder | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        cfg = model.config
        self.num_frames, self.k = cfg.num_frames, cfg.k
        self.feature_size, self.input_size = cfg.feature_size, cfg.input_size
        self.class_names = tuple(cfg.class_names)
        self.embed_dim = model.classifier.embed_dim
        self.model_name = f"{cfg.name} ({cfg.method})"
        if embedder is not None:  # a backbone served elsewhere (streamer.cluster)
            self.backend, self.embedder = embedder.name, embedder
        else:
            self.backend = resolve_backend(backend, self.device)
            self.embedder = EMBEDDERS[self.backend](self.model, self.device, max_batch=max_embed_batch)
        self.cache = FrameCache(cfg.feature_size)
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
        # Sampler + head run where they are faster for a given number of windows (a GPU is
        # launch-bound for one window); the backbone always runs on self.device.
        self._step_models = {self.device: self.model}
        if self.device.type != "cpu":
            self._step_models[torch.device("cpu")] = copy.deepcopy(self.model).cpu()
        self._step_device: dict[int, torch.device] = {}
        # Per-frame features on arrival for samplers with select_features (DAS, ADPS).
        self.features_on_arrival = callable(getattr(self.model.sampler, "select_features", None))
        self._empty_stats = frame_stats(torch.zeros(1, 1, self.feature_size, self.feature_size), self.feature_size)[0]
        self.warm_up_s = self.on_worker(self._warm_up, max_windows)
        log.info(
            "inference engine %s on %s warmed up in %.2f s: backbone batches %s, 1-%d windows per call",
            self.backend,
            self.device,
            self.warm_up_s,
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
        small = torch.from_numpy(np.stack([self.cache.small[k] for k in keys])).unsqueeze(1)
        self.cache.stats.update(zip(keys, frame_stats(small, self.feature_size)))

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
    def process(self, windows: list[Window]) -> list[WindowResult]:
        """Classify a batch of windows (any streams). Blocking, from any thread; runs on the worker.

        A failed call empties the cache (its windows never retire their frames) and raises.
        """
        return self.on_worker(self._process, windows)

    def submit(self, windows: list[Window]) -> Future[list[WindowResult]]:
        """:meth:`process` without blocking: the batch is queued on the worker and the future holds
        its results (an event loop awaits ``asyncio.wrap_future(engine.submit(...))``; no thread
        waits on it)."""
        return self._worker.submit(self._process, windows)

    @torch.inference_mode()
    def _process(self, windows: list[Window]) -> list[WindowResult]:
        try:
            self._drain()
            todo = [w for w in windows if w.frames]
            results = dict(zip(map(id, todo), self._classify(todo))) if todo else {}
        except BaseException:
            self._inbox.clear()
            self.cache.clear()
            raise
        out = []
        for w in windows:
            out.append(results.get(id(w)) or WindowResult(window=w, selected=(), probs=(), frames_embedded=0))
            self.cache.retire(w.stream, w.retire)
        return out

    def _classify(self, windows: list[Window]) -> list[WindowResult]:
        t0 = time.perf_counter()
        step = self._step_device.get(len(windows), self.device)
        model = self._step_models[step]
        small, valid = self._sampler_input(windows)
        # As in SampledClassifier.forward: picks that are padding or empty (lost probe contact)
        # are left out of the pooling, so they need no embedding either.
        usable = valid.numpy() & (small.reshape(len(windows), self.num_frames, -1).max(axis=2) > 0)
        if self.features_on_arrival:
            raw = with_motion(self._window_stats(windows), torch.from_numpy(small))
            picks = model.sampler.select_features(raw.to(step), torch.from_numpy(usable).to(step))
        else:
            x = torch.from_numpy(small).unsqueeze(2).to(step)  # uint8: the sampler scales it
            picks = model.sampler.select(x, valid.to(step))
        indices = picks.indices.cpu().numpy()
        t1 = time.perf_counter()
        embedded = self._embed_picks(windows, indices, usable)
        t2 = time.perf_counter()  # the embedders return CPU tensors, so CUDA work is done here
        probs, selected = self._head(model, step, windows, indices, usable)
        t3 = time.perf_counter()
        for name, s in (("sampler", t1 - t0), ("embed", t2 - t1), ("head", t3 - t2)):
            self.stage_ms[name].append(1000.0 * s)
            for listener in self.stage_listeners:
                listener(name, s)
        return [
            WindowResult(
                window=w, selected=selected[b], probs=tuple(float(p) for p in probs[b]), frames_embedded=embedded[b]
            )
            for b, w in enumerate(windows)
        ]

    def _sampler_input(self, windows: list[Window]) -> tuple[np.ndarray, torch.Tensor]:
        """The windows' feature-size copies (B, T, fs, fs) uint8, zero-padded, and the (B, T) mask of real frames."""
        B, T, fs = len(windows), self.num_frames, self.feature_size
        small = np.zeros((B, T, fs, fs), np.uint8)
        valid = torch.zeros(B, T, dtype=torch.bool)
        for b, w in enumerate(windows):
            for t, frame in enumerate(w.frames):
                small[b, t] = self.cache.small_copy(w.stream, frame)
            valid[b, : len(w.frames)] = True
        return small, valid

    def _window_stats(self, windows: list[Window]) -> torch.Tensor:
        """(B, T, d - 1): the frames' per-frame features (made now for frames that lack them)."""
        missing = [(w.stream, f.seq) for w in windows for f in w.frames if (w.stream, f.seq) not in self.cache.stats]
        if missing:
            self._frame_stats(list(dict.fromkeys(missing)))
        out = self._empty_stats.repeat(len(windows), self.num_frames, 1)  # padding: empty frames
        for b, w in enumerate(windows):
            if w.frames:
                out[b, : len(w.frames)] = torch.stack([self.cache.stats[(w.stream, f.seq)] for f in w.frames])
        return out

    def _embed_picks(self, windows: list[Window], indices: np.ndarray, usable: np.ndarray) -> list[int]:
        """Embed the usable picks with no embedding yet, in one embedder call; frames embedded per window."""
        new: dict[Key, np.ndarray] = {}
        counts = [0] * len(windows)
        for b, w in enumerate(windows):
            for t in indices[b]:
                key = (w.stream, w.frames[t].seq) if usable[b, t] else None
                if key is not None and key not in self.cache.emb and key not in new:
                    new[key] = w.frames[t].image
                    counts[b] += 1
        if new:
            batch = np.stack([resize_gray(image, self.input_size) for image in new.values()])
            self.cache.emb.update(zip(new, self.embedder.embed(batch)))
        return counts

    def _head(
        self,
        model: SampledClassifier,
        step: torch.device,
        windows: list[Window],
        indices: np.ndarray,
        usable: np.ndarray,
    ) -> tuple[np.ndarray, list[tuple[int, ...]]]:
        """Class probabilities (B, C) from the picks' embeddings, and the picked real frames' seqs."""
        picked = torch.zeros(len(windows), self.k, self.embed_dim)
        mask = torch.zeros(len(windows), self.k, dtype=torch.bool)
        selected: list[tuple[int, ...]] = []
        for b, w in enumerate(windows):
            selected.append(tuple(w.frames[t].seq for t in indices[b] if t < len(w.frames)))
            for j, t in enumerate(indices[b]):
                if usable[b, t]:
                    picked[b, j] = self.cache.emb[(w.stream, w.frames[t].seq)]
                    mask[b, j] = True
        logits = model.classifier.classify(picked.to(step), mask.to(step))
        return torch.softmax(logits.float(), dim=-1).cpu().numpy(), selected

    @torch.inference_mode()
    def _warm_up(self, max_windows: int) -> float:
        """Run every backbone bucket, and sampler + head for 1..max_windows windows on each
        candidate device (keeping the faster one per count). Returns the seconds taken."""
        t0 = time.perf_counter()
        self.embedder.warm_up()
        T, fs = self.num_frames, self.feature_size
        for B in range(1, max_windows + 1):
            x = torch.zeros(B, T, 1, fs, fs, dtype=torch.uint8)
            emb, mask = torch.zeros(B, self.k, self.embed_dim), torch.ones(B, self.k, dtype=torch.bool)
            times = {}
            for dev, model in self._step_models.items():
                for _ in range(2):  # the first pays the new shape, the second is timed
                    t = time.perf_counter()
                    if self.features_on_arrival:
                        raw = with_motion(self._empty_stats.repeat(B, T, 1), x[:, :, 0])
                        model.sampler.select_features(
                            raw.to(dev), torch.ones(B, T, dtype=torch.bool, device=dev)
                        ).indices.cpu()
                    else:
                        model.sampler.select(x.to(dev)).indices.cpu()
                    model.classifier.classify(emb.to(dev), mask.to(dev)).cpu()
                    times[dev] = time.perf_counter() - t
            self._step_device[B] = min(times, key=times.__getitem__)
        return time.perf_counter() - t0
