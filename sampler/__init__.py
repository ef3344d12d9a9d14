"""The model half of das-stream: frame samplers (DAS and its baselines) and the classifier.

Import the samplers from here::

    from sampler import DASSampler, DPSSampler, ADPSSampler, UniformSampler, RandomSampler, FullSampler
"""

from core.errors import ConfigError, DataError, ModelFileError, SamplerError

from .base import Sampler
from .baselines import ADPSSampler, DPSSampler, FullSampler, RandomSampler, UniformSampler
from .classifier import FrameClassifier, frame_classifier
from .das import DASSampler
from .features import frame_features
from .model import ModelConfig, SampledClassifier, build_model, build_sampler
from .output import SamplerOutput

__all__ = [
    "ADPSSampler",
    "ConfigError",
    "DASSampler",
    "DataError",
    "DPSSampler",
    "FrameClassifier",
    "FullSampler",
    "ModelConfig",
    "ModelFileError",
    "RandomSampler",
    "SampledClassifier",
    "Sampler",
    "SamplerError",
    "SamplerOutput",
    "UniformSampler",
    "build_model",
    "build_sampler",
    "frame_classifier",
    "frame_features",
]
