"""Errors a user can cause: bad input tensors, a bad model or data file, a bad setting."""


class SamplerError(ValueError):
    """Bad input to a sampler or model (wrong shape, k > T, NaN frames) or an unusable file.

    A ValueError, so callers that expect the standard type for bad arguments catch it.
    """


class ModelFileError(SamplerError):
    """A model file that is missing, truncated, or not a das-stream model."""


class DataError(SamplerError):
    """A dataset file or folder that cannot be used (missing keys, unreadable video, bad CSV)."""


class ConfigError(ValueError):
    """A configuration file or flag with an unknown key or a bad value (training or streaming).

    Not a SamplerError: a bad setting of ``das-stream run`` is no fault of the sampler. It lives
    here because ``sampler.settings`` (shared by both configs) must not import ``streamer``.

    Args:
        message: the one-line message.
        key: the setting at fault, when one is (lets a caller restate it under its own name).
        problem: what is wrong with it, worded to follow the key ("must be one of ...").
    """

    def __init__(self, message: str, *, key: str | None = None, problem: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.problem = problem or message
