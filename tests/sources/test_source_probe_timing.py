"""Probe capture times across a drop-out: frames the demuxer holds until the read timeout keep
their real capture time, so the gap is measured from the last real frame (a real MPEG-TS over
UDP writer in another process, tests/sources/udp_writer.py)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from sources_help import free_port
from udp_writer import phase_level

from sources.probe import ProbeSource

pytestmark = pytest.mark.timeout(90)

FPS, PAUSE, TIMEOUT = 25, 2.0, 1.5


async def test_frames_before_a_drop_out_keep_their_capture_time(spawn):
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    writer = spawn("udp_writer.py", url, FPS, PAUSE, 40, 40)
    source = ProbeSource(
        url, timeout=TIMEOUT, reconnect_initial=0.1, reconnect_max=0.2, max_reconnects=50, open_attempts=50
    )
    frames = []

    async def read() -> None:
        async for frame in source:
            frames.append(frame)
            if sum(f.image.mean() > 135 for f in frames) >= 5:
                return

    async with source:
        await asyncio.wait_for(read(), timeout=60)
    assert await asyncio.to_thread(writer.wait, 30) == 0
    back = next(i for i, f in enumerate(frames) if f.image.mean() > 135)
    before = frames[:back]
    assert len(before) >= 10
    steps = [b.t_capture - a.t_capture for a, b in zip(before, before[1:])]
    # the last frame(s) came out only when the 1.5 s read timeout fired; stamped as sent, 40 ms apart
    assert max(steps) < TIMEOUT / 2, steps[-5:]
    # the gap runs from the last frame sent before the pause to the first one received after it,
    # which is frame i of the new stream (the receiver joins it late), sent i / FPS after the pause
    first = frames[back]
    i = round((float(first.image.mean()) - phase_level(1, 0)) / 2)
    sent_gap = PAUSE + (i + 1) / FPS
    assert abs((first.t_capture - before[-1].t_capture) - sent_gap) < 0.5
