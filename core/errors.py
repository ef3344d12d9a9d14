"""Every error a user can cause, under one root.

The command line catches :class:`DasStreamError` and prints its message in one line; anything
else is a programming error and stays a traceback. Each message names the thing at fault and the
fix.
"""

from __future__ import annotations


class DasStreamError(Exception):
    """Root of the errors a user can cause (a bad setting, file, message or device)."""


class ConfigError(DasStreamError, ValueError):
    """A configuration file or flag with an unknown key or a bad value (training or streaming).

    Args:
        message: the one-line message.
        key: the setting at fault, when one is (lets a caller restate it under its own name).
        problem: what is wrong with it, worded to follow the key ("must be one of ...").
    """

    def __init__(self, message: str, *, key: str | None = None, problem: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.problem = problem or message


class SamplerError(DasStreamError, ValueError):
    """Bad input to a sampler or model (wrong shape, k > T, NaN frames).

    A ValueError, so callers that expect the standard type for bad arguments catch it.
    """


class ModelFileError(SamplerError):
    """A model file or package that is missing, truncated, or not a das-stream model."""


class DataError(DasStreamError, ValueError):
    """A dataset file or folder that cannot be used (missing keys, unreadable video, bad CSV)."""


class SourceError(DasStreamError):
    """A source cannot be opened or read."""


class SinkError(DasStreamError):
    """A sink cannot be set up (a bad broker URL, an unwritable path)."""


class EngineError(DasStreamError):
    """The inference engine cannot run as asked (a device torch does not see, a missing runtime)."""
