"""The torch backends of the backbone (see :mod:`.embedders`): eager PyTorch and CUDA graphs.

Imported only when a torch model runs on one of them (``--engine torch`` or ``torch-cudagraph``).
"""

from __future__ import annotations

import copy
from typing import TypeVar

import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from core.errors import EngineError
from sampler.model import SampledClassifier

from .embedders import BucketedEmbedder

M = TypeVar("M", bound=torch.nn.Module)


def fold_batchnorm(module: M) -> M:
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
        self.classifier = fold_batchnorm(model.classifier).to(device).to(memory_format=torch.channels_last)
        self.device = device

    @torch.inference_mode()
    def _forward(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).to(self.device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
            emb = self.classifier.embed(t)  # channels-last weights make the convolutions channels-last
        return emb.float().cpu().numpy()


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

    def _forward(self, x: np.ndarray) -> np.ndarray:
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
            return host_out.numpy().copy()
