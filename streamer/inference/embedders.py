"""Backbone embedders: gray uint8 frames (N, S, S) -> float32 embeddings (N, E), numpy.

Every backend sees only a small fixed set of batch sizes, the *buckets* (1, 2, 4, ... up to the
largest batch). A request of N frames is cut into bucket-sized calls, the last one padded with
empty frames whose outputs are dropped. Every backend pays for a new input shape (CUDA: seconds
per shape; oneDNN and ONNX Runtime: less), so :meth:`BucketedEmbedder.warm_up` runs every bucket
once before the first frame and then times it, fitting cost = per call + per frame x size (a line
through all buckets, so one noisy timing cannot skew it). The plan for N frames is the set of
buckets with the least fitted cost: on a CPU, where the cost grows with the frames, about the
binary split of N (little padding); on a GPU, where a call costs about the same for any size,
one padded call.

A new backend (TensorRT, OpenVINO) is one file with a subclass that implements ``_forward`` for
a (b, 1, S, S) uint8 batch, plus one line in :data:`EMBEDDERS`. This module imports no torch:
the torch backends live in :mod:`.torch_embedders`, loaded when one of them is chosen.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import Any, Protocol

import numpy as np

from core.errors import EngineError
from sampler.package import ort_session

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """What the engine needs from a backbone backend."""

    name: str
    buckets: tuple[int, ...]
    shapes_seen: set[tuple[int, ...]]  # every input shape the backend was called with

    def embed(self, frames: np.ndarray) -> Any: ...  # uint8 (N, S, S) -> float32 (N, E): numpy or a CPU tensor
    def warm_up(self) -> float: ...  # seconds


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """1, 2, 4, ... below ``max_batch``, then ``max_batch`` itself."""
    if max_batch < 1:
        raise EngineError(f"max_embed_batch must be >= 1, got {max_batch}")
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return (*sizes, max_batch)


class BucketedEmbedder:
    """Base of every backend: bucketing, padding, warm-up, shape bookkeeping.

    Args:
        input_size: side S of the frames.
        max_batch: the largest bucket.
    """

    name = "base"

    def __init__(self, *, input_size: int, max_batch: int) -> None:
        self.input_size = input_size
        self.buckets = batch_buckets(max_batch)
        self.shapes_seen: set[tuple[int, ...]] = set()
        # Cost of one call per bucket; until warm-up measures it, the frames plus a little per call.
        self.cost: dict[int, float] = {b: b + 0.5 for b in self.buckets}
        self.measured: dict[int, float] = {}  # seconds per call, as timed in warm-up
        self._plans: dict[int, tuple[int, ...]] = {}

    def _forward(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - every backend has one
        """(b, 1, S, S) uint8 with b a bucket -> float32 (b, E) numpy."""
        raise NotImplementedError

    def run_bucket(self, x: np.ndarray) -> np.ndarray:
        """One backbone call on (b, 1, S, S) uint8, b a bucket (what warm-up times, and a benchmark)."""
        self.shapes_seen.add(tuple(x.shape))
        return self._forward(x)

    def warm_up(self, repeats: int = 1) -> float:
        """Run every bucket once (the per-shape cost), then time it and fit the cost line;
        returns the seconds taken."""
        t0 = time.perf_counter()
        for b in sorted(self.buckets, reverse=True):
            x = np.zeros((b, 1, self.input_size, self.input_size), np.uint8)
            self.run_bucket(x)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                self.run_bucket(x)
                times.append(time.perf_counter() - t)
            self.measured[b] = min(times)
        self.fit_costs()
        return time.perf_counter() - t0

    def fit_costs(self) -> None:
        """The cost line through the measured bucket times (see the module docstring)."""
        sizes = np.array(self.buckets, float)
        if len(sizes) > 1:
            per_frame, per_call = np.polyfit(sizes, [self.measured[b] for b in self.buckets], 1)
        else:
            per_frame, per_call = self.measured[self.buckets[0]], 0.0
        per_call = max(per_call, 1e-3 * max(per_frame, 0.0), 1e-9)  # > 0: fewer calls win a tie
        per_frame = max(per_frame, 1e-3 * per_call / sizes[-1], 1e-9)  # flat (a GPU): padding is almost free
        self.cost = {b: float(per_call + per_frame * b) for b in self.buckets}
        self._plans.clear()

    def _plan(self, n: int) -> tuple[int, ...]:
        """Buckets covering n frames at the least measured cost (n <= the largest bucket)."""
        if n not in self._plans:
            # (cost, calls, buckets): among plans of equal fitted cost the one with the fewest calls
            # wins (with a fitted per-call cost of 0, sixteen 1-frame calls would tie with one
            # 16-frame call; measured on ONNX Runtime, 16 frames at 224 px: 58 ms split into
            # 2,2,2,2,1x8 against 37 ms in one call)
            best: list[tuple[float, int, tuple[int, ...]]] = [(0.0, 0, ())]
            for m in range(1, n + 1):
                best.append(
                    min(
                        (
                            self.cost[b] + best[max(0, m - b)][0],
                            best[max(0, m - b)][1] + 1,
                            (b, *best[max(0, m - b)][2]),
                        )
                        for b in self.buckets
                    )
                )
            self._plans[n] = tuple(sorted(best[n][2], reverse=True))
        return self._plans[n]

    def plan(self, n: int) -> tuple[int, ...]:
        """The bucket sizes of the calls that embed n frames (the last one padded when needed)."""
        top = self.buckets[-1]
        return (top,) * (n // top) + (self._plan(n % top) if n % top else ())

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """Embed gray uint8 frames (N, S, S) -> float32 (N, E)."""
        out, i = [], 0
        for b in self.plan(len(frames)):
            chunk = frames[i : i + b]
            i += len(chunk)
            x = np.zeros((b, 1, *frames.shape[1:]), np.uint8)
            x[: len(chunk), 0] = chunk
            out.append(self.run_bucket(x)[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    __call__ = embed


def onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


class Onnx(BucketedEmbedder):
    """The backbone as an ONNX graph run with ONNX Runtime: the CPU provider, or on ``cuda:N``
    the CUDA provider on GPU N. The graph is a package's ``backbone`` graph, or exported once from
    a torch model (a CPU copy; :func:`sampler.export.backbone_graph`).

    Args:
        model: a :class:`~sampler.package.PackageModel` or a ``SampledClassifier``.
        device: "cpu", "cuda[:N]" (a string or a torch.device).
        threads: intra-op threads of the CPU provider (None: torch's count for a torch model,
            the usable cores for a package).
        spinning: let the pool threads busy-wait between runs (off: the engine runs in bursts,
            and spinning threads take the cores from decoding; benchmarks/bench_ort_spinning.py).
    """

    name = "onnx"

    def __init__(
        self,
        model: Any,
        device: Any = "cpu",
        *,
        max_batch: int = 64,
        threads: int | None = None,
        spinning: bool = False,
    ) -> None:
        if not onnx_available():
            raise EngineError("--engine onnx needs onnxruntime; install das-stream with: pip install -e .")
        device = str(device)
        if getattr(model, "kind", None) == "package":
            input_size, graph = model.input_size, model.graph("backbone")
            threads = threads or len(os.sched_getaffinity(0))
        else:  # a torch model: export its backbone (torch is loaded already)
            import torch

            from sampler.export import backbone_graph

            input_size, graph = model.config.input_size, backbone_graph(model)
            threads = threads or torch.get_num_threads()
        super().__init__(input_size=input_size, max_batch=max_batch)
        if device.startswith("cuda"):
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EngineError(
                    "this onnxruntime has no CUDA provider; install onnxruntime-gpu, "
                    "or use --engine torch-cudagraph (or auto) on a GPU"
                )
            if device == "cuda":
                device = f"cuda:{_current_cuda_device(model)}"
        self.session = ort_session(graph, device=device, threads=threads, spinning=spinning)
        self.providers = self.session.get_providers()

    def _forward(self, x: np.ndarray) -> np.ndarray:
        (emb,) = self.session.run(None, {"frames": x})
        return emb


def _current_cuda_device(model: Any) -> int:
    """torch's current CUDA device for a torch model (``cuda`` alone), else 0."""
    if getattr(model, "kind", None) == "package":
        return 0
    import torch

    return torch.cuda.current_device()


class _Registry(Mapping):
    """name -> embedder class, the torch ones imported on first use (they load torch)."""

    def __init__(self, entries: dict[str, str | type]) -> None:
        self._entries = entries

    def __getitem__(self, name: str) -> Any:
        entry = self._entries[name]
        if isinstance(entry, str):  # "module:Class", the module relative to this package
            module, _, cls = entry.partition(":")
            entry = getattr(import_module(module, __package__), cls)
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


# name -> class built as cls(model, device, max_batch=...); a new backend is one line here.
EMBEDDERS: Mapping[str, Any] = _Registry(
    {"torch": ".torch_embedders:TorchEager", "torch-cudagraph": ".torch_embedders:TorchCudaGraph", "onnx": Onnx}
)
BACKENDS = ("auto", *EMBEDDERS)
TORCH_BACKENDS = ("torch", "torch-cudagraph")


def resolve_backend(name: str, device: Any, *, package: bool = False) -> str:
    """``auto``: a package runs on ONNX Runtime; a torch model on the CUDA-graph embedder on a
    GPU, else on ONNX Runtime when installed, else on eager torch."""
    if name not in BACKENDS:
        raise EngineError(f"unknown engine {name!r}; use one of {', '.join(BACKENDS)}")
    on_gpu = str(getattr(device, "type", device)).startswith("cuda")
    if package:
        if name in TORCH_BACKENDS:
            raise EngineError(
                f"engine {name} runs torch model files; a model package runs on ONNX Runtime "
                "(--engine onnx or auto), or pass the torch model file"
            )
        return "onnx"
    if name == "auto":
        if on_gpu:
            return "torch-cudagraph"
        return "onnx" if onnx_available() else "torch"
    return name
