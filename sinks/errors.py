"""Errors a user can cause in a sink: a bad broker URL, an unwritable path."""


class SinkError(Exception):
    """A sink cannot be set up; the message names the thing and the fix."""
