"""Backbone embedders: gray uint8 frames (N, S, S) -> float32 embeddings (N, E) on the CPU.

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
a (b, 1, S, S) uint8 batch, plus one line in :data:`EMBEDDERS`.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from core.errors import EngineError
from sampler.model import SampledClassifier

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """What the engine needs from a backbone backend."""

    name: str
    buckets: tuple[int, ...]
    shapes_seen: set[tuple[int, ...]]  # every input shape the backend was called with

    def embed(self, frames: np.ndarray) -> torch.Tensor: ...  # uint8 (N, S, S) -> float32 (N, E), CPU
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

    def _forward(self, x: np.ndarray) -> torch.Tensor:  # pragma: no cover - every backend has one
        """(b, 1, S, S) uint8 with b a bucket -> float32 (b, E) on the CPU."""
        raise NotImplementedError

    def _run(self, x: np.ndarray) -> torch.Tensor:
        self.shapes_seen.add(tuple(x.shape))
        return self._forward(x)

    def warm_up(self, repeats: int = 1) -> float:
        """Run every bucket once (the per-shape cost), then time it and fit the cost line;
        returns the seconds taken."""
        t0 = time.perf_counter()
        for b in sorted(self.buckets, reverse=True):
            x = np.zeros((b, 1, self.input_size, self.input_size), np.uint8)
            self._run(x)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                self._run(x)
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

    def embed(self, frames: np.ndarray) -> torch.Tensor:
        """Embed gray uint8 frames (N, S, S) -> float32 (N, E) on the CPU."""
        out, i = [], 0
        for b in self.plan(len(frames)):
            chunk = frames[i : i + b]
            i += len(chunk)
            x = np.zeros((b, 1, *frames.shape[1:]), np.uint8)
            x[: len(chunk), 0] = chunk
            out.append(self._run(x)[: len(chunk)])
        return torch.cat(out) if out else torch.zeros(0, 0)

    __call__ = embed


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


class TorchEager(BucketedEmbedder):
    """The classifier's backbone in eager PyTorch, prepared for inference: batch norm folded into
    the convolutions and channels-last memory layout (about 1.8x faster on CPU than the training
    layout, see docs/performance.md); CUDA autocast (float16) on a GPU."""

    name = "torch"

    def __init__(self, model: SampledClassifier, device: torch.device, *, max_batch: int = 64) -> None:
        super().__init__(input_size=model.config.input_size, max_batch=max_batch)
        self.classifier = fold_batchnorm(model.classifier).to(device, memory_format=torch.channels_last)
        self.device = device

    @torch.inference_mode()
    def _forward(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x).to(self.device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
            emb = self.classifier.embed(t)  # channels-last weights make the convolutions channels-last
        return emb.float().cpu()


class TorchCudaGraph(BucketedEmbedder):
    """The backbone captured once per bucket in a CUDA graph: float16 weights, channels-last,
    a pinned host buffer per bucket and non-blocking copies each way. A replay launches the whole
    backbone at once, so a call no longer costs a kernel launch per layer."""

    name = "torch-cudagraph"

    def __init__(self, model: SampledClassifier, device: torch.device, *, max_batch: int = 64) -> None:
        if device.type != "cuda":
            raise EngineError(
                f"engine torch-cudagraph needs a CUDA device, got {device}; "
                "use --device cuda, or --engine torch or auto"
            )
        super().__init__(input_size=model.config.input_size, max_batch=max_batch)
        self.device = device
        self.classifier = fold_batchnorm(model.classifier).to(device).half().to(memory_format=torch.channels_last)
        self._pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[
            int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
        ] = {}

    def _capture(self, b: int) -> None:
        """One graph for batches of b (called by _forward, whose context makes plain tensors)."""
        S = self.input_size
        dev_in = torch.zeros(b, 1, S, S, dtype=torch.uint8, device=self.device)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm-up iterations off the default stream, as capture requires
            for _ in range(3):
                self.classifier.embed(dev_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            dev_out = self.classifier.embed(dev_in).float()
        host_in = torch.zeros(b, 1, S, S, dtype=torch.uint8).pin_memory()
        host_out = torch.zeros(dev_out.shape, dtype=torch.float32).pin_memory()
        self._graphs[b] = (graph, dev_in, dev_out, host_in, host_out)

    def _forward(self, x: np.ndarray) -> torch.Tensor:
        # Plain tensors even when the caller is in inference mode: the static buffers are
        # written in place on every call, which inference tensors allow only inside that mode.
        with torch.cuda.device(self.device), torch.inference_mode(False), torch.no_grad():
            if len(x) not in self._graphs:  # captured in warm-up, largest first (they share one pool)
                self._capture(len(x))
            graph, dev_in, dev_out, host_in, host_out = self._graphs[len(x)]
            host_in.numpy()[:] = x
            dev_in.copy_(host_in, non_blocking=True)
            graph.replay()
            host_out.copy_(dev_out, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
            return host_out.clone()


class _EmbedGraph(torch.nn.Module):
    """uint8 (N, 1, S, S) -> embeddings, the graph exported to ONNX."""

    def __init__(self, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.embed(x)


def onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


class Onnx(BucketedEmbedder):
    """The same backbone exported once to ONNX (from a CPU copy of the model) and run with
    ONNX Runtime: the CPU provider, or on ``cuda:N`` the CUDA provider on GPU N.

    Args:
        threads: intra-op threads of the CPU provider (None: torch's count).
        spinning: let the pool threads busy-wait between runs (off: the engine runs in bursts,
            and spinning threads take the cores from decoding; benchmarks/bench_ort_spinning.py).
    """

    name = "onnx"

    def __init__(
        self,
        model: SampledClassifier,
        device: torch.device,
        *,
        max_batch: int = 64,
        threads: int | None = None,
        spinning: bool = False,
    ) -> None:
        super().__init__(input_size=model.config.input_size, max_batch=max_batch)
        if not onnx_available():  # an optional dependency
            raise EngineError("--engine onnx needs onnxruntime; install it with: pip install 'das-stream[onnx]'")
        import onnxruntime as ort

        providers: list = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EngineError(
                    "this onnxruntime has no CUDA provider; install onnxruntime-gpu, "
                    "or use --engine torch-cudagraph (or auto) on a GPU"
                )
            index = device.index if device.index is not None else torch.cuda.current_device()
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        S = self.input_size
        graph = _EmbedGraph(copy.deepcopy(model.classifier).cpu().eval())  # export never touches the GPU
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            path = Path(tmp) / "embed.onnx"
            torch.onnx.export(
                graph,
                (torch.zeros(2, 1, S, S, dtype=torch.uint8),),
                str(path),
                dynamo=False,
                input_names=["frames"],
                output_names=["embedding"],
                dynamic_axes={"frames": {0: "n"}, "embedding": {0: "n"}},
                opset_version=17,
            )
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads or torch.get_num_threads()
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.providers = self.session.get_providers()

    def _forward(self, x: np.ndarray) -> torch.Tensor:
        (emb,) = self.session.run(None, {"frames": x})
        return torch.from_numpy(emb)


# name -> class built as cls(model, device, max_batch=...); a new backend is one line here.
EMBEDDERS: dict[str, type[BucketedEmbedder]] = {
    "torch": TorchEager,
    "torch-cudagraph": TorchCudaGraph,
    "onnx": Onnx,
}
BACKENDS = ("auto", *EMBEDDERS)


def resolve_backend(name: str, device: torch.device) -> str:
    """``auto``: the CUDA-graph embedder on a GPU; ONNX Runtime on the CPU when installed, else torch."""
    if name == "auto":
        if device.type == "cuda":
            return "torch-cudagraph"
        return "onnx" if onnx_available() else "torch"
    if name not in EMBEDDERS:
        raise EngineError(f"unknown engine {name!r}; use one of {', '.join(BACKENDS)}")
    return name
