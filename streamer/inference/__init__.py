"""The inference engine: windows in, class probabilities out (see :mod:`.engine`).

- :mod:`.cache`: :class:`FrameCache`, the per-frame copies and embeddings of open windows;
- :mod:`.embedders`: the :class:`Embedder` protocol, its backends and the ``EMBEDDERS`` registry;
- :mod:`.engine`: :class:`InferenceEngine`, sampler -> embedder -> head on a worker thread.
"""

from .cache import FrameCache, resize_gray, to_gray
from .embedders import (
    BACKENDS,
    EMBEDDERS,
    BucketedEmbedder,
    Embedder,
    Onnx,
    TorchCudaGraph,
    TorchEager,
    batch_buckets,
    fold_batchnorm,
    resolve_backend,
)
from .engine import InferenceEngine, WindowResult, resolve_device

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
