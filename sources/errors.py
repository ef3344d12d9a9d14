"""Errors a user can cause in a source: a bad spec, a missing or corrupt file, a bad message."""


class SourceError(Exception):
    """A source cannot be opened or read; the message names the thing and the fix."""
