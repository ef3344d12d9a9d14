"""Errors a user can cause in the model half: bad input tensors, a bad model or data file."""


class SamplerError(ValueError):
    """Bad input to a sampler or model (wrong shape, k > T, NaN frames) or an unusable file.

    A ValueError, so callers that expect the standard type for bad arguments catch it.
    """


class ModelFileError(SamplerError):
    """A model file that is missing, truncated, or not a das-stream model."""


class DataError(SamplerError):
    """A dataset file or folder that cannot be used (missing keys, unreadable video, bad CSV)."""


class ConfigError(SamplerError):
    """A configuration file or flag with an unknown key or a bad value (training or streaming)."""
