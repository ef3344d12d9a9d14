"""The latest image each source received, before it was resized for the model: what a person sees.

Sources resize every frame to the model's input (a 640x480 probe image becomes 112x112, squashed).
The web view wants the image as it came, at its own size and aspect ratio, without keeping or
copying anything more. So each source has a :class:`Preview`, and :meth:`OutputFormat.resize
<sources.image.OutputFormat.resize>` leaves a reference to its input (after the guard, the gray or
RGB conversion and any crop) in the preview of the source whose reader thread is running it. A
source's reader thread is bound to its preview when it starts (``Source.__aenter__``); code
outside a source's reader thread (training, tests, benchmarks) records nothing.

One image per source is kept, the newest; a replayed file's reader runs ahead of its pacing by
its read-ahead (``queue_size`` frames), so its preview may be a few frames ahead of the windows.
"""

from __future__ import annotations

import threading

import numpy as np


class Preview:
    """Holds the newest image a source received (a reference; None until the first)."""

    __slots__ = ("image",)

    def __init__(self) -> None:
        self.image: np.ndarray | None = None


_current = threading.local()


def bind(preview: Preview | None) -> None:
    """Make ``preview`` receive what :func:`offer` is given on this thread."""
    _current.preview = preview


def offer(image: np.ndarray) -> None:
    """Keep ``image`` as the newest preview of this thread's source, if it has one."""
    preview = getattr(_current, "preview", None)
    if preview is not None:
        preview.image = image
