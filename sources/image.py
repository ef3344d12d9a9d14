"""Output image format shared by all sources: gray or RGB, optional resize (cv2, INTER_AREA)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import SourceError


def normalise_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``size`` as (width, height): an int gives a square, a pair is (w, h); None stays None."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in pair):
        raise SourceError(f"output size must be a positive int or a (width, height) pair of positive ints, got {size!r}")
    return int(pair[0]), int(pair[1])


@dataclass(frozen=True)
class OutputFormat:
    """What a source hands out: uint8 (H, W) gray or (H, W, 3) RGB, optionally resized.

    Args:
        gray: produce (H, W) gray when True, (H, W, 3) RGB when False.
        size: (width, height) to resize to, or None to keep the input size.
    """

    gray: bool = True
    size: tuple[int, int] | None = None

    def apply(self, image: np.ndarray, *, bgr: bool = False) -> np.ndarray:
        """Convert a uint8 (H, W), (H, W, 1) or (H, W, 3) image (RGB, or BGR when ``bgr``).

        Channels are reduced before resizing and expanded after it, so the resize always
        touches as few bytes as possible. The result is a new C-contiguous array unless the
        input already matched (then the input itself is returned).
        """
        if image.ndim == 3 and image.shape[2] == 1:
            image = np.ascontiguousarray(image[:, :, 0])
        if self.gray and image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)
        elif bgr and image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        image = self.resize(image)
        if not self.gray and image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        return image

    def resize(self, image: np.ndarray) -> np.ndarray:
        """Resize to ``size`` with INTER_AREA (no-op when already that size or size is None)."""
        if self.size is None or (image.shape[1], image.shape[0]) == self.size:
            return image
        return cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
