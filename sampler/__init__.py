"""The model half of das-stream: frame samplers (DAS and its baselines) and the classifier.

Import the samplers from here::

    from sampler import DASSampler, DPSSampler, ADPSSampler, UniformSampler, RandomSampler, FullSampler
"""
from .base import Sampler, SamplerOutput
from .baselines import ADPSSampler, DPSSampler, FullSampler, RandomSampler, UniformSampler
from .das import DASSampler
from .errors import ConfigError, DataError, ModelFileError, SamplerError

__all__ = [
    "ADPSSampler",
    "ConfigError",
    "DASSampler",
    "DataError",
    "DPSSampler",
    "FullSampler",
    "ModelFileError",
    "RandomSampler",
    "Sampler",
    "SamplerError",
    "SamplerOutput",
    "UniformSampler",
]
