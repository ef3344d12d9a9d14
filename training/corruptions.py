"""A clinical stream model: seeded corruptions that a live ultrasound probe produces.

Each corruption hits a *run* of consecutive frames (a burst), as on a real probe:

- ``lost_contact``: the probe leaves the skin; the frames go black (a few grey levels of noise).
- ``frozen``: the scanner or the capture card stalls; one frame is repeated.
- ``gain``: the operator turns the gain up or down; brightness is multiplied (x0.4-x2.2).
- ``noise``: electrical interference; Gaussian noise (sigma 15-40 grey levels) on the frames.
- ``blur``: fast probe motion; a horizontal or vertical box blur of 5-11 pixels.

:class:`StreamCorruption` draws, for every clip, how many bursts of each kind (a Poisson number
with mean ``rate * frames / 100``), where they start and how long they last (``min_run`` ..
``max_run`` frames), from a generator the caller seeds: the same seed, the same corrupted clip.
Frames are uint8 (N, H, W) and stay uint8; a corrupted copy is returned, the input is not touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy.ndimage import uniform_filter1d

from core.errors import ConfigError

KINDS = ("lost_contact", "frozen", "gain", "noise", "blur")
LOST_CONTACT_MAX = 4  # the brightest grey level of a lost-contact frame


def lost_contact(frames: np.ndarray, a: int, b: int, rng: np.random.Generator) -> None:
    """Frames ``[a, b)`` become near-black (0 to LOST_CONTACT_MAX grey levels)."""
    frames[a:b] = rng.integers(0, LOST_CONTACT_MAX + 1, size=frames[a:b].shape, dtype=np.uint8)


def frozen(frames: np.ndarray, a: int, b: int, rng: np.random.Generator) -> None:
    """Frames ``[a, b)`` repeat frame ``a`` (the last one before the stall)."""
    frames[a + 1 : b] = frames[a]


def gain(frames: np.ndarray, a: int, b: int, rng: np.random.Generator) -> None:
    """Frames ``[a, b)`` are multiplied by one gain in 0.4-0.7 or 1.5-2.2, clipped to 255."""
    g = rng.uniform(0.4, 0.7) if rng.random() < 0.5 else rng.uniform(1.5, 2.2)
    frames[a:b] = np.clip(frames[a:b].astype(np.float32) * g, 0, 255).astype(np.uint8)


def noise(frames: np.ndarray, a: int, b: int, rng: np.random.Generator) -> None:
    """Frames ``[a, b)`` get Gaussian noise with one sigma in 15-40 grey levels."""
    sigma = rng.uniform(15, 40)
    noisy = frames[a:b].astype(np.float32) + rng.normal(0, sigma, size=frames[a:b].shape)
    frames[a:b] = np.clip(noisy, 0, 255).astype(np.uint8)


def blur(frames: np.ndarray, a: int, b: int, rng: np.random.Generator) -> None:
    """Frames ``[a, b)`` get a box blur of 5-11 pixels along one image axis (motion blur)."""
    size = int(rng.integers(5, 12))
    axis = 1 + int(rng.integers(0, 2))
    frames[a:b] = (
        uniform_filter1d(frames[a:b].astype(np.float32), size=size, axis=axis, mode="nearest").round().astype(np.uint8)
    )


APPLY = {"lost_contact": lost_contact, "frozen": frozen, "gain": gain, "noise": noise, "blur": blur}


@dataclass(frozen=True)
class StreamCorruption:
    """How often and how long the corruptions strike.

    Args:
        rate: bursts of each kind per 100 frames (Poisson mean), e.g. 2 -> about 2 black runs,
            2 freezes, ... in a 100-frame video.
        min_run, max_run: burst length in frames (uniform, inclusive).
        kinds: which corruptions to use (default all five).
    """

    rate: float = 2.0
    min_run: int = 2
    max_run: int = 8
    kinds: tuple[str, ...] = KINDS

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, key: str = "data.corruption_options") -> StreamCorruption:
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise ConfigError(f"unknown key {sorted(unknown)[0]!r} in {key}; known: {', '.join(sorted(known))}")
        opts = dict(options)
        if "kinds" in opts:
            kinds = opts["kinds"]
            opts["kinds"] = tuple(kinds.split(",") if isinstance(kinds, str) else kinds)
        spec = cls(**opts)
        bad = [k for k in spec.kinds if k not in KINDS]
        if bad or not spec.kinds:
            raise ConfigError(
                f"{key}.kinds: unknown corruption {bad[0] if bad else '(none)'!r}; use some of {', '.join(KINDS)}"
            )
        if spec.rate < 0 or not 1 <= spec.min_run <= spec.max_run:
            raise ConfigError(f"{key}: need rate >= 0 and 1 <= min_run <= max_run, got {spec}")
        return spec

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A corrupted copy of (N, H, W) uint8 ``frames``."""
        out = np.array(frames, dtype=np.uint8, copy=True)
        n = len(out)
        if n == 0:
            return out
        for kind in self.kinds:
            for _ in range(int(rng.poisson(self.rate * n / 100.0))):
                length = int(rng.integers(self.min_run, self.max_run + 1))
                a = int(rng.integers(0, n))
                APPLY[kind](out, a, min(n, a + length), rng)
        return out


def corrupt_videos(
    videos: list[np.ndarray], spec: StreamCorruption, *, seed: int, ids: list[int] | None = None
) -> list[np.ndarray]:
    """Corrupt each video with its own generator ``(seed, id)``: the same video gets the same
    corruption whatever else is in the list (so every method is tested on identical frames)."""
    ids = list(range(len(videos))) if ids is None else ids
    return [spec(v, np.random.default_rng([seed, i])) for v, i in zip(videos, ids)]
