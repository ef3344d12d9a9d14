"""Test media for the source tests: small videos encoded with PyAV whose frames can be told
apart after lossy coding, and free loopback ports.

Frame ``i`` is flat gray at ``level(i)`` except a pure red block in the top-left corner, so a
decoded frame reveals its index (the bottom-right quadrant's mean) and its colour order.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sources.synthetic import encode_video

WIDTH, HEIGHT = 64, 48


def level(i: int) -> int:
    """The gray level of frame ``i`` (distinct for i < 25, far apart enough to survive coding)."""
    return 20 + 9 * (i % 25)


def index_of(image: np.ndarray) -> int:
    """The frame index a decoded frame shows (inverse of ``level`` for i < 25)."""
    corner = image[HEIGHT // 2 :, WIDTH // 2 :]
    return int(round((float(corner.mean()) - 20) / 9))


def frame_rgb(i: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    image = np.full((height, width, 3), level(i), np.uint8)
    image[: height // 4, : width // 4] = (255, 0, 0)
    return image


@dataclass(frozen=True)
class VideoKind:
    """How to encode one container kind."""

    suffix: str
    codec: str
    pix_fmt: str
    format: str | None = None


KINDS = {
    "mp4": VideoKind(".mp4", "libx264", "yuv420p"),
    "avi": VideoKind(".avi", "mpeg4", "yuv420p"),
    "mov": VideoKind(".mov", "mjpeg", "yuvj420p"),
    "mpeg": VideoKind(".mpeg", "mpeg1video", "yuv420p", format="mpeg"),
    "gif": VideoKind(".gif", "gif", "gray"),
}


def write_video(path: Path, kind: VideoKind, *, frames: int, fps: int = 25) -> Path:
    """Encode ``frames`` test frames at ``fps`` into ``path`` with PyAV."""
    return encode_video(
        path, (frame_rgb(i) for i in range(frames)), fps=fps, codec=kind.codec, pix_fmt=kind.pix_fmt, format=kind.format
    )


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A currently free 127.0.0.1 port (TCP by default, or UDP with socket.SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def collect(source, limit: int | None = None) -> list:
    """Every frame a source yields (or its first ``limit``), inside ``async with source``."""
    frames = []
    async with source:
        async for frame in source:
            frames.append(frame)
            if limit is not None and len(frames) == limit:
                break
    return frames
