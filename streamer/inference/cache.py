"""Per-frame state the engine keeps between windows, keyed by ``(stream, seq)``.

- a gray copy at the sampler's feature resolution, made when the frame arrives;
- the sampler's per-frame features of that copy (those not depending on the window), also
  made on arrival, for samplers that look at features (DAS, ADPS);
- the backbone embedding, made the first time a window *picks* the frame.

So with overlapping windows no frame is resized or embedded twice. An entry goes when the window
that retires its frame has been processed, and everything goes when a call fails (a failed
window never retires its frames). One thread owns the cache: the engine's worker thread.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from sources.image import area_resize

Key = tuple[str, int]


def to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image


def resize_gray(image: np.ndarray, size: int) -> np.ndarray:
    """Gray uint8 copy at size x size (the input itself when it already fits)."""
    return area_resize(to_gray(image), (size, size))


class FrameCache:
    """Feature-size copies and embeddings of the frames of open windows.

    Args:
        feature_size: side of the sampler's copy of each frame.
    """

    def __init__(self, feature_size: int) -> None:
        self.feature_size = feature_size
        self.small: dict[Key, np.ndarray] = {}
        self.emb: dict[Key, np.ndarray] = {}
        self.stats: dict[Key, np.ndarray] = {}

    def small_copy(self, stream: str, frame) -> np.ndarray:
        """The frame's feature-size gray copy, made now if it is not held yet."""
        key = (stream, frame.seq)
        small = self.small.get(key)
        if small is None:
            small = self.small[key] = resize_gray(frame.image, self.feature_size)
        return small

    def retire(self, stream: str, seqs: Iterable[int]) -> None:
        """Forget frames no later window holds."""
        for seq in seqs:
            self.small.pop((stream, seq), None)
            self.emb.pop((stream, seq), None)
            self.stats.pop((stream, seq), None)

    def clear(self) -> None:
        self.small.clear()
        self.emb.clear()
        self.stats.clear()

    def __len__(self) -> int:
        """Frames with any entry."""
        return len(self.small.keys() | self.emb.keys() | self.stats.keys())
