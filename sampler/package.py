"""The window model, and the model package that runs it without torch.

A *window model* is what the streaming engine runs (numpy in, numpy out):

- ``card``: a JSON-able dict (name, method, class_names, num_frames T, k, feature_size,
  input_size, embed_dim, preprocessing with fps, the sampler's order rule, the exit rule,
  provenance, the export's self-check figures);
- ``frame_stats(small uint8 (N, fs, fs)) -> float32 (N, d)``: per-frame features made as frames
  arrive, for samplers that use them (``uses_stats``);
- ``order(small uint8 (B, T, fs, fs), stats float32 (B, T, d) | None, usable bool (B, T)) ->
  int64 (B, T)``: every position of each window, best first (usable ones first); the first k,
  sorted, are the sampler's k picks (:func:`picks`);
- ``head(emb float32 (B, K, E), mask bool (B, K)) -> float32 (B, C)``: class probabilities from
  any K embeddings (masked attention pooling + MLP), so a prediction can grow frame by frame.

Two implementations: :class:`sampler.torch_model.TorchWindowModel` (a ``SampledClassifier``,
torch) and :class:`PackageModel` here (ONNX Runtime and numpy; importing this module imports
no torch). The backbone is the engine's *embedder*: the package's ``backbone`` graph
(:meth:`PackageModel.graph`) or the torch model's.

A model package (``das-stream export MODEL --out NAME.dasp``) is one zip file::

    card.json           the card (format "das-stream-package", version 1)
    backbone.onnx       uint8 (N, 1, S, S) -> float32 (N, E), dynamic N
    head.onnx           (emb (B, K, E), mask (B, K)) -> probs (B, C), dynamic B and K
    frame_stats.onnx    uint8 (N, 1, fs, fs) -> float32 (N, d)     [samplers that use frame features]
    scores.onnx         DAS: (small, [stats], usable) -> per-frame scores (B, T) or segment logits (B, k, T)

The sampler's order rule (``card["sampler"]["order"]``) says how ``order`` ranks the frames, as
the torch sampler's ``order`` does (:mod:`core.order`): ``scores`` (DAS: the exported per-frame
scores, best first), ``segments`` (DAS: each segment's best frame first), ``logits`` (DPS: its
learned per-position logits, stored in the card), ``uniform`` (coarse to fine, the k middles
first unless ``nested``), ``random`` (numpy noise) and ``all`` (Full: coarse to fine).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.errors import ConfigError, EngineError
from core.exit import ExitRule
from core.order import by_priority, coarse_to_fine, picks, put_first
from core.settings import DEVICE_FORMS, is_device_name

from .package_file import is_package, read_package

INVALID_PENALTY = np.float32(1e4)  # as sampler.gumbel.INVALID_PENALTY: invalid frames lose to valid ones


class WindowModel(Protocol):
    """What the engine runs (see the module docstring)."""

    kind: str  # "torch" or "package"
    device: Any  # a torch.device for a torch model, a device name for a package
    card: dict[str, Any]
    preprocessing: dict[str, Any]  # what training did to its clips (size, fps, ...); {} when unknown
    name: str
    num_frames: int
    k: int
    feature_size: int
    input_size: int
    embed_dim: int
    class_names: tuple[str, ...]
    uses_stats: bool

    def frame_stats(self, small: np.ndarray) -> np.ndarray: ...
    def embed(self, frames: np.ndarray) -> np.ndarray: ...  # the backbone in one call (no buckets)
    def order(self, small: np.ndarray, stats: np.ndarray | None, usable: np.ndarray) -> np.ndarray: ...
    # Optional: ``last_scores`` (B, T), the per-frame scores the last ``order`` call ranked by
    # (DAS), or None; the engine passes them on with each window (the web view shows them).
    def head(self, emb: np.ndarray, mask: np.ndarray) -> np.ndarray: ...
    def warm_up(self, max_windows: int) -> None: ...


# --- order rules a package needs beyond core.order (numpy) ----------------------------------------
def uniform_middles(usable: np.ndarray, k: int) -> np.ndarray:
    """(B, T) bool: UniformSampler's k picks, the usable frames of rank floor((2j + 1) n / 2k)
    (its float32 priority, the top k, earlier frames winning ties, as the sampler computes them)."""
    t = usable.shape[1]
    rank = np.cumsum(usable, axis=1) - 1
    count = usable.sum(axis=1, keepdims=True)
    targets = (2 * np.arange(k) + 1) * count // (2 * k)  # (B, k)
    hit = usable & (rank[:, :, None] == targets[:, None, :]).any(axis=2)
    position = np.arange(t, dtype=np.float32) / np.float32(t)
    priority = np.float32(2.0) * hit + usable.astype(np.float32) - np.float32(0.5) * position
    first = np.zeros_like(usable)
    np.put_along_axis(first, np.argsort(-priority, axis=1, kind="stable")[:, :k], True, axis=1)
    return first


def segment_winners(scores: np.ndarray, usable: np.ndarray, k: int) -> np.ndarray:
    """(B, T) bool: DAS ``selection="segments"``: the best usable frame of each of k equal segments
    (frame t in segment floor(t k / T); invalid frames lose to valid ones, as in the sampler)."""
    t = usable.shape[1]
    outside = (np.arange(t) * k // t)[None, :] != np.arange(k)[:, None]  # (k, T)
    scaled = scores[:, None, :] - INVALID_PENALTY * (~usable)[:, None, :].astype(np.float32)
    winners = np.where(outside, -np.inf, scaled).argmax(axis=2)  # (B, k)
    first = np.zeros_like(usable)
    np.put_along_axis(first, winners, True, axis=1)
    return first & usable


# --- device and sessions ---------------------------------------------------------------------------
def package_device(device: str) -> str:
    """The device rule of a package (no torch): ``auto`` -> ``cuda`` when this ONNX Runtime has
    the CUDA provider, else ``cpu``; ``cuda[:N]`` needs that provider."""
    if not is_device_name(device):
        raise EngineError(f"unknown device {device!r}; use {DEVICE_FORMS}")
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if device.startswith("cuda") and not has_cuda:
        raise EngineError(
            f"device {device!r} requested but this onnxruntime has no CUDA provider; "
            "install onnxruntime-gpu, use --device cpu, or run the torch model file with pip install 'das-stream[torch]'"
        )
    return device


def ort_session(graph: bytes, *, device: str = "cpu", threads: int | None = None, spinning: bool = False):
    """An ONNX Runtime session of ``graph``: the CPU provider, or on ``cuda[:N]`` the CUDA provider
    on GPU N. ``threads``: intra-op threads (None: ONNX Runtime's choice, one per physical core);
    ``spinning``: let pool threads busy-wait between runs (off: the engine runs in bursts)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    providers: list = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(device.partition(":")[2] or 0)}))
    return ort.InferenceSession(graph, opts, providers=providers)


class PackageModel:
    """A model package run with ONNX Runtime and numpy (the :class:`WindowModel` of a package).

    Args:
        path: the package file (or its bytes).
        device: "auto", "cpu" or "cuda[:N]" (see :func:`package_device`).
    """

    kind = "package"

    def __init__(self, path: str | os.PathLike | bytes, *, device: str = "auto") -> None:
        self.path = None if isinstance(path, bytes) else Path(path)
        self.card, self.graphs = read_package(path)
        self.device = package_device(device)
        c = self.card
        self.name = str(c["name"])
        self.method = str(c["method"])
        self.num_frames, self.k = int(c["num_frames"]), int(c["k"])
        self.feature_size, self.input_size = int(c["feature_size"]), int(c["input_size"])
        self.embed_dim = int(c["embed_dim"])
        self.class_names = tuple(c["class_names"])
        self.sampler = dict(c["sampler"])
        self.uses_stats = bool(self.sampler.get("stats"))
        self.preprocessing = dict(c.get("preprocessing") or {})
        # The small graphs run on the CPU with one thread: each call is microseconds of work,
        # where a thread pool's wake-up costs more than it saves.
        self._sessions = {
            name: ort_session(self.graphs[name], threads=1)
            for name in ("frame_stats", "scores", "head")
            if name in self.graphs
        }
        self._rng = np.random.default_rng(self.sampler.get("seed"))
        if self.sampler["order"] == "logits":
            self._logits = np.asarray(self.sampler["logits"], np.float32)

    def __repr__(self) -> str:
        return f"PackageModel({str(self.path)!r}, {self.method}, k={self.k} of T={self.num_frames})"

    def graph(self, name: str) -> bytes:
        return self.graphs[name]

    def frame_stats(self, small: np.ndarray) -> np.ndarray:
        (stats,) = self._sessions["frame_stats"].run(None, {"frames": np.ascontiguousarray(small[:, None])})
        return stats

    def order(self, small: np.ndarray, stats: np.ndarray | None, usable: np.ndarray) -> np.ndarray:
        rule, (b, t) = self.sampler["order"], usable.shape
        self.last_scores: np.ndarray | None = None
        if rule == "all":
            return coarse_to_fine(usable)
        if rule == "uniform":
            order = coarse_to_fine(usable)
            return order if self.sampler.get("nested") else put_first(order, uniform_middles(usable, self.k))
        if rule == "random":
            return by_priority(self._rng.random((b, t)), usable)
        if rule == "logits":
            return by_priority(np.broadcast_to(self._logits, (b, t)), usable)
        feeds = {"small": np.ascontiguousarray(small), "usable": usable}
        if self.uses_stats:
            if stats is None:
                stats = self.frame_stats(small.reshape(b * t, *small.shape[2:])).reshape(b, t, -1)
            feeds["stats"] = stats
        if self.sampler.get("batch") == 1:  # a graph of one window (learned features)
            session = self._sessions["scores"]
            scores = np.concatenate(
                [session.run(None, {k: v[i : i + 1] for k, v in feeds.items()})[0] for i in range(b)]
            )
        else:
            (scores,) = self._sessions["scores"].run(None, feeds)
        first = segment_winners(scores, usable, self.k) if rule == "segments" else None
        if rule == "scores":
            self.last_scores = scores
        return by_priority(scores, usable, first=first)

    def head(self, emb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        (probs,) = self._sessions["head"].run(None, {"emb": np.ascontiguousarray(emb, np.float32), "mask": mask})
        return probs

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """The backbone on gray uint8 frames (N, S, S) in one call (the engine uses bucketed embedders)."""
        if not hasattr(self, "_backbone"):
            self._backbone = ort_session(self.graphs["backbone"], device=self.device)
        (emb,) = self._backbone.run(None, {"frames": np.ascontiguousarray(frames[:, None])})
        return emb

    def warm_up(self, max_windows: int) -> None:
        """Run order and head once for every batch of 1..max_windows windows (each new shape's
        first call costs more)."""
        t, fs = self.num_frames, self.feature_size
        if self.uses_stats:
            self.frame_stats(np.zeros((1, fs, fs), np.uint8))
        for b in range(1, max_windows + 1):
            small = np.zeros((b, t, fs, fs), np.uint8)
            stats = np.zeros((b, t, self.stats_dim), np.float32) if self.uses_stats else None
            self.order(small, stats, np.ones((b, t), bool))
            self.head(np.zeros((b, self.k, self.embed_dim), np.float32), np.ones((b, self.k), bool))

    def full_twin(self) -> PackageModel:
        """The same package embedding every frame (k = T, Full's order): the full-sequence
        baseline of ``bench``, the same backbone and head."""
        twin = copy.copy(self)
        twin.k, twin.method, twin.uses_stats = self.num_frames, "full", False
        twin.sampler = {"order": "all"}
        twin.card = {**self.card, "method": "full", "k": self.num_frames, "sampler": twin.sampler}
        return twin

    @property
    def stats_dim(self) -> int:
        return int(self.sampler.get("stats_dim") or 0)


def classify_windows(model: WindowModel, frames: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Picks (B, k) and probabilities (B, C) of whole windows of gray uint8 frames (B, T, S, S),
    the way the streaming engine computes them (feature-size copies, order, the usable picks
    embedded by ``model.embed``, head), without its cache: for exports' checks and evaluation."""
    from sources.image import area_resize  # the runtime's resize rule (loading it imports every source)

    b, t = valid.shape
    fs, size = model.feature_size, model.input_size
    small = np.stack([area_resize(f, (fs, fs)) for f in frames.reshape(b * t, *frames.shape[2:])])
    usable = valid & (small.reshape(b, t, -1).max(axis=2) > 0)
    stats = model.frame_stats(small).reshape(b, t, -1) if model.uses_stats else None
    chosen = picks(model.order(small.reshape(b, t, fs, fs), stats, usable), model.k)
    emb = np.zeros((b, model.k, model.embed_dim), np.float32)
    mask = np.take_along_axis(usable, chosen, axis=1)
    if mask.any():
        wanted = frames[np.nonzero(mask)[0], chosen[mask]]
        emb[mask] = model.embed(np.stack([area_resize(f, (size, size)) for f in wanted]))
    return chosen, model.head(emb, mask)


def torch_missing_error(path: Path, what: str = "") -> ConfigError:
    return ConfigError(
        f"{path} is a PyTorch model file{what}: it needs torch, pip install 'das-stream[torch]'; "
        "or run its package (das-stream export on a machine with torch)"
    )


def load_window_model(path: str | os.PathLike, *, device: str = "auto") -> WindowModel:
    """A package (:class:`PackageModel`) or a torch model file (:class:`TorchWindowModel`, which
    imports torch: only when such a file is given)."""
    path = Path(path)
    if is_package(path):
        return PackageModel(path, device=device)
    try:
        from .torch_model import TorchWindowModel
    except ImportError as exc:  # a light install: no torch
        raise torch_missing_error(path) from exc
    return TorchWindowModel.load(path, device=device)


def package_text(path: str | os.PathLike) -> str:
    """``das-stream info PACKAGE``: a readable summary of a package's card (no torch needed)."""
    card, graphs = read_package(path)
    pre, prov, check = card.get("preprocessing") or {}, card.get("provenance") or {}, card.get("check") or {}
    sampler = card["sampler"]
    fps = f"{pre['fps']:g} fps" if pre.get("fps") else "no frame rate (run keeps every frame)"
    lines = [
        f"model package: {path} ({card['name']})",
        f"method: {card['method']}, keeps k={card['k']} of T={card['num_frames']} frames; order: {sampler['order']}"
        + (", per-frame features on arrival" if sampler.get("stats") else "")
        + f"; early exit: {ExitRule.from_dict(card.get('exit')).describe()}",
        f"classes: {', '.join(card['class_names'])}",
        f"sizes: sampler features {card['feature_size']} px, backbone input {card['input_size']} px, "
        f"embedding {card['embed_dim']}; backbone {card.get('backbone')}",
        f"preprocessing: {pre.get('kind')}, {fps}, {pre.get('size')} px, gray, crop {pre.get('crop') or 'none'}",
        "graphs: " + ", ".join(f"{name} {len(data) / 1e6:.2f} MB" for name, data in graphs.items()),
    ]
    if check:
        lines.append(
            f"export check: {check['windows']} windows of the {check['source']}: picks identical in "
            f"{check['picks_identical']}, top class in {check['top_class_agree']}, max |p_package - p_torch| "
            f"{check['max_abs_prob_diff']:.1e} (limit {check['tolerance']:g}), probabilities spread {check['prob_spread']:.2f}"
        )
    metrics = prov.get("metrics") or {}
    if metrics:
        lines.append(
            "metrics: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        )
    lines.append(
        f"exported from: {prov.get('source')} (sha256 {str(prov.get('source_sha256'))[:16]}) on {prov.get('exported')}"
    )
    if (prov.get("training") or {}).get("data_fingerprint"):
        tr = prov["training"]
        lines.append(f"training data: {tr.get('data_kind')} fingerprint {tr.get('data_fingerprint')}")
    return "\n".join(lines) + "\n"


def describe(model: WindowModel) -> str:
    """One line for logs: what was loaded."""
    where = getattr(model, "path", None)
    what = "model package" if model.kind == "package" else "torch model"
    return f"{what} {where or model.name} ({model.card.get('method')}, k={model.k} of T={model.num_frames})"
