"""The model half of das-stream: frame samplers (DAS and its baselines) and the classifier.

Import the samplers from here::

    from sampler import DASSampler, DPSSampler, ADPSSampler, UniformSampler, RandomSampler, FullSampler

The names are loaded on first use (PEP 562), so ``import sampler.package`` (the torch-free model
package the runtime runs) does not import torch.
"""

from importlib import import_module
from typing import Any

from core.errors import ConfigError, DataError, ModelFileError, SamplerError

_LAZY = {
    "Sampler": ".base",
    "ADPSSampler": ".baselines",
    "DPSSampler": ".baselines",
    "FullSampler": ".baselines",
    "RandomSampler": ".baselines",
    "UniformSampler": ".baselines",
    "FrameClassifier": ".classifier",
    "frame_classifier": ".classifier",
    "DASSampler": ".das",
    "frame_features": ".features",
    "ModelConfig": ".model",
    "SampledClassifier": ".model",
    "build_model": ".model",
    "build_sampler": ".model",
    "SamplerOutput": ".output",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sampler' has no attribute {name!r}")
    return getattr(import_module(_LAZY[name], __name__), name)


__all__ = ["ConfigError", "DataError", "ModelFileError", "SamplerError", *_LAZY]
