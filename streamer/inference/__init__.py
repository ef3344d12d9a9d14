"""The inference engine: windows in, class probabilities out (see :mod:`.engine`).

- :mod:`.cache`: :class:`FrameCache`, the per-frame copies and embeddings of open windows;
- :mod:`.embedders`: the :class:`Embedder` protocol, the ONNX Runtime backend and the
  ``EMBEDDERS`` registry; :mod:`.torch_embedders`: the torch backends;
- :mod:`.engine`: :class:`InferenceEngine`, window model (order) -> embedder -> head on a worker thread.

Importing this package imports no torch; the torch names below (``TorchEager``,
``TorchCudaGraph``, ``fold_batchnorm``, ``resolve_device``) load it on first use.
"""

from importlib import import_module
from typing import Any

from .cache import FrameCache, resize_gray, to_gray
from .embedders import BACKENDS, EMBEDDERS, BucketedEmbedder, Embedder, Onnx, batch_buckets, resolve_backend
from .engine import InferenceEngine, WindowResult

_TORCH = {
    "TorchEager": ".torch_embedders",
    "TorchCudaGraph": ".torch_embedders",
    "fold_batchnorm": ".torch_embedders",
}


def __getattr__(name: str) -> Any:
    if name == "resolve_device":  # the one device rule of the torch engines
        return import_module("sampler.device").resolve_device
    if name in _TORCH:
        return getattr(import_module(_TORCH[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "EMBEDDERS",
    "BucketedEmbedder",
    "Embedder",
    "FrameCache",
    "InferenceEngine",
    "Onnx",
    "TorchCudaGraph",
    "TorchEager",
    "WindowResult",
    "batch_buckets",
    "fold_batchnorm",
    "resize_gray",
    "resolve_backend",
    "resolve_device",
    "to_gray",
]
