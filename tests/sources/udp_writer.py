"""A live MPEG-TS stream over UDP, written with PyAV by a separate process for the probe tests.

    python udp_writer.py udp://127.0.0.1:PORT FPS PAUSE FRAMES [FRAMES ...]

Sends one phase of FRAMES frames per argument, paced at FPS, closing the stream and staying
silent for PAUSE seconds between phases (a probe that drops out and comes back). Frame i of
phase p is flat gray at ``phase_level(p, i)``.
"""

from __future__ import annotations

import sys
import time

import av
import numpy as np

WIDTH, HEIGHT = 64, 48


def phase_level(phase: int, i: int) -> int:
    """Phase 0 spans 30-120, phase 1 spans 150-240 (for up to 46 frames per phase)."""
    return 30 + 120 * phase + 2 * min(i, 45)


def send_phase(url: str, phase: int, frames: int, fps: int) -> None:
    with av.open(url, "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.gop_size = 5  # frequent keyframes: a receiver that joins late syncs quickly
        start = time.monotonic()
        for i in range(frames):
            gray = np.full((HEIGHT, WIDTH), phase_level(phase, i), np.uint8)
            frame = av.VideoFrame.from_ndarray(gray, format="gray").reformat(format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
            delay = start + (i + 1) / fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        container.mux(stream.encode())


def main(url: str, fps: str, pause: str, *phases: str) -> None:
    for phase, frames in enumerate(phases):
        if phase:
            time.sleep(float(pause))
        send_phase(f"{url}?pkt_size=1316", phase, int(frames), int(fps))


if __name__ == "__main__":
    main(*sys.argv[1:])
