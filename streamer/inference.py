"""Window inference: sampler picks k frames, the backbone embeds only those, pooling + head classify.

Everything here is blocking and runs in one worker thread (the pipeline calls
:meth:`InferenceEngine.process` through ``asyncio.to_thread``). Per frame it keeps, keyed by
``(stream, seq)``:

- a gray copy at the sampler's feature resolution, made when the frame arrives (the pipeline
  calls :meth:`InferenceEngine.prepare`) or else the first time a window holds it;
- the backbone embedding, computed the first time a window *picks* the frame.

So with overlapping windows no frame is resized or embedded twice. Entries are evicted when the
window that retires the frame has been processed.
"""
from __future__ import annotations

import copy
import logging
import tempfile
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from sampler.errors import SamplerError
from sampler.model import SampledClassifier
from sampler.settings import resolve_device  # the one device rule, shared with training
from sources.image import area_resize

from .window import Window

log = logging.getLogger(__name__)

Key = tuple[str, int]


@dataclass(frozen=True)
class WindowResult:
    """What the model said about one window.

    Attributes:
        window: the window.
        selected: sequence numbers of the real frames the sampler picked, ascending.
        probs: class probabilities, in the model's class order.
        backbone_calls: frames embedded for this window (picked frames not already cached).
    """

    window: Window
    selected: tuple[int, ...]
    probs: tuple[float, ...]
    backbone_calls: int


def to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image


def resize_gray(image: np.ndarray, size: int) -> np.ndarray:
    """Gray uint8 copy at size x size (the input itself when it already fits)."""
    return area_resize(to_gray(image), (size, size))


def fold_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` (eval mode) with every Conv2d -> BatchNorm2d pair of a Sequential folded
    into one convolution: the same function, one pass over the activations less."""
    module = copy.deepcopy(module).eval()
    for parent in module.modules():
        if not isinstance(parent, torch.nn.Sequential):
            continue
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                parent._modules[a] = fuse_conv_bn_eval(conv, bn)
                parent._modules[b] = torch.nn.Identity()
    return module


class TorchEmbedder:
    """The classifier's backbone in eager PyTorch, prepared for inference: batch norm folded into
    the convolutions and channels-last memory layout (about 1.8x faster on CPU than the training
    layout, see docs/performance.md); CUDA autocast (float16) on a GPU."""

    name = "torch"

    def __init__(self, model: SampledClassifier, device: torch.device) -> None:
        self.classifier = fold_batchnorm(model.classifier).to(device, memory_format=torch.channels_last)
        self.device = device

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        """Embed gray uint8 frames (N, S, S) -> float32 (N, E) on the CPU."""
        x = torch.from_numpy(batch).unsqueeze(1).to(self.device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
            emb = self.classifier.embed(x)  # channels-last weights make the convolutions channels-last
        return emb.float().cpu()


class _EmbedGraph(torch.nn.Module):
    """uint8 (N, 1, S, S) -> embeddings, the graph exported to ONNX."""

    def __init__(self, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.embed(x)


class OnnxEmbedder:
    """The same backbone exported once to ONNX and run with onnxruntime (CPU or CUDA provider)."""

    name = "onnx"

    def __init__(self, model: SampledClassifier, device: torch.device, *, threads: int | None = None,
                 spinning: bool = False) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # an optional dependency
            raise SamplerError("--engine onnx needs onnxruntime; install it with: pip install 'das-stream[onnx]'") from exc
        size = model.config.input_size
        graph = _EmbedGraph(model.classifier).eval()
        dummy = torch.zeros(2, 1, size, size, dtype=torch.uint8)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            path = Path(tmp) / "embed.onnx"
            torch.onnx.export(
                graph, (dummy,), str(path), dynamo=False, input_names=["frames"], output_names=["embedding"],
                dynamic_axes={"frames": {0: "n"}, "embedding": {0: "n"}}, opset_version=17,
            )
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads or torch.get_num_threads()
            # By default no busy-waiting between runs: the engine runs in bursts (once per window),
            # and spinning pool threads take the cores from decoding, the sampler and other sessions
            # (benchmarks/bench_ort_spinning.py measures both settings).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
            providers = ["CPUExecutionProvider"]
            if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.providers = self.session.get_providers()

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        (emb,) = self.session.run(None, {"frames": np.ascontiguousarray(batch[:, None])})
        return torch.from_numpy(emb)


class InferenceEngine:
    """Runs a :class:`SampledClassifier` on windows, embedding each frame at most once.

    Args:
        model: the trained model (put in eval mode here).
        device: "auto", "cpu" or "cuda[:N]".
        engine: "torch" (eager) or "onnx" (backbone through onnxruntime).
        max_embed_batch: most frames per backbone call.
    """

    def __init__(self, model: SampledClassifier, *, device: str = "auto", engine: str = "torch",
                 max_embed_batch: int = 64) -> None:
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        cfg = model.config
        self.num_frames = cfg.num_frames
        self.k = cfg.k
        self.feature_size = cfg.feature_size
        self.input_size = cfg.input_size
        self.class_names = tuple(cfg.class_names)
        self.embed_dim = model.classifier.embed_dim
        self.model_name = f"{cfg.name} ({cfg.method})"
        if engine == "torch":
            self.embedder: TorchEmbedder | OnnxEmbedder = TorchEmbedder(self.model, self.device)
        elif engine == "onnx":
            self.embedder = OnnxEmbedder(self.model, self.device)
        else:
            raise SamplerError(f"unknown engine {engine!r}; use torch or onnx")
        self.max_embed_batch = max_embed_batch
        self.reuse_embeddings = True  # False only to measure what the cache saves (benchmarks)
        self._small: dict[Key, np.ndarray] = {}
        self._emb: dict[Key, torch.Tensor] = {}
        # Wall time of each _classify call's stages, in ms (recent calls only), for benchmarks:
        # "sampler" (feature-size copies, features, attention, selection), "embed" (backbone on the
        # picks not yet cached), "head" (pooling, MLP, softmax).
        self.stage_ms: dict[str, deque[float]] = {name: deque(maxlen=4096) for name in ("sampler", "embed", "head")}
        # Called as fn(stage, seconds) for every stage time recorded (e.g. the Prometheus metrics);
        # called from the worker thread, so a listener must be thread-safe and quick.
        self.stage_listeners: list = []

    @property
    def cached(self) -> int:
        """Frames currently holding a cached embedding (for memory checks)."""
        return len(self._emb)

    def clear_stage_times(self) -> None:
        """Forget the recorded stage times (a benchmark starts its own count)."""
        for samples in self.stage_ms.values():
            samples.clear()

    @property
    def held_copies(self) -> int:
        """Frames currently holding a feature-size copy (for memory checks)."""
        return len(self._small)

    def prepare(self, stream: str, frame) -> None:
        """Make the frame's feature-size copy now, as it arrives, so that the window close does not
        wait for it. Optional (a window makes the copies it lacks) and cheap (one area resize);
        safe to call from another thread than :meth:`process`."""
        self._small_copy(stream, frame)

    def _small_copy(self, stream: str, frame) -> np.ndarray:
        key = (stream, frame.seq)
        small = self._small.get(key)
        if small is None:
            small = self._small[key] = resize_gray(frame.image, self.feature_size)
        return small

    def process_each(self, windows: list[Window]) -> list[WindowResult]:
        """Windows one call each (no batching across windows); honours ``reuse_embeddings``."""
        out = []
        for w in windows:
            if not self.reuse_embeddings:
                self._emb.clear()
            out.extend(self.process([w]))
        return out

    @torch.inference_mode()
    def process(self, windows: list[Window]) -> list[WindowResult]:
        """Classify a batch of windows (any streams). Blocking; call from a worker thread."""
        todo = [w for w in windows if w.frames]
        results: dict[int, WindowResult] = {}
        if todo:
            for w, res in zip(todo, self._classify(todo)):
                results[id(w)] = res
        out = []
        for w in windows:
            res = results.get(id(w)) or WindowResult(window=w, selected=(), probs=(), backbone_calls=0)
            out.append(res)
            for seq in w.retire:
                self._small.pop((w.stream, seq), None)
                self._emb.pop((w.stream, seq), None)
        return out

    def _classify(self, windows: list[Window]) -> list[WindowResult]:
        t0 = time.perf_counter()
        B, T, fs = len(windows), self.num_frames, self.feature_size
        small = np.zeros((B, T, fs, fs), np.uint8)
        valid = torch.zeros(B, T, dtype=torch.bool)
        for b, w in enumerate(windows):
            for t, frame in enumerate(w.frames):
                small[b, t] = self._small_copy(w.stream, frame)
            valid[b, : len(w.frames)] = True
        x = torch.from_numpy(small).unsqueeze(2).to(self.device)  # uint8: the sampler scales it
        indices = self.model.sampler.select(x, valid.to(self.device)).indices.cpu().numpy()
        # As in SampledClassifier.forward: picks that are padding or empty (lost probe contact)
        # are left out of the pooling, so they need no embedding either.
        usable = valid.numpy() & (small.reshape(B, T, -1).max(axis=2) > 0)

        # Embed the usable picked frames that have no embedding yet, in as few backbone calls as possible.
        new: dict[Key, np.ndarray] = {}
        calls_by_window = [0] * B
        for b, w in enumerate(windows):
            for t in indices[b]:
                if usable[b, t]:
                    key = (w.stream, w.frames[t].seq)
                    if key not in self._emb and key not in new:
                        new[key] = resize_gray(w.frames[t].image, self.input_size)
                        calls_by_window[b] += 1
        keys = list(new)
        t1 = time.perf_counter()
        for i in range(0, len(keys), self.max_embed_batch):
            chunk = keys[i : i + self.max_embed_batch]
            for key, e in zip(chunk, self.embedder(np.stack([new[k] for k in chunk]))):
                self._emb[key] = e
        t2 = time.perf_counter()  # the embedders return CPU tensors, so CUDA work is done here

        picked = torch.zeros(B, self.k, self.embed_dim)
        mask = torch.zeros(B, self.k, dtype=torch.bool)
        selected: list[tuple[int, ...]] = []
        for b, w in enumerate(windows):
            seqs = []
            for j, t in enumerate(indices[b]):
                if t < len(w.frames):
                    seqs.append(w.frames[t].seq)
                if usable[b, t]:
                    picked[b, j] = self._emb[(w.stream, w.frames[t].seq)]
                    mask[b, j] = True
            selected.append(tuple(seqs))
        logits = self.model.classifier.classify(picked.to(self.device), mask.to(self.device))
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        t3 = time.perf_counter()
        for name, ms in (("sampler", t1 - t0), ("embed", t2 - t1), ("head", t3 - t2)):
            self.stage_ms[name].append(1000.0 * ms)
            for listener in self.stage_listeners:
                listener(name, ms)
        return [
            WindowResult(window=w, selected=selected[b], probs=tuple(float(p) for p in probs[b]),
                         backbone_calls=calls_by_window[b])
            for b, w in enumerate(windows)
        ]
