"""Probe source: a real MPEG-TS stream over udp://127.0.0.1 written by another process
(tests/sources/udp_writer.py) that drops out and comes back, OpenCV capture, missing devices."""

from __future__ import annotations

import asyncio
import socket

import pytest
from sources_help import free_port, index_of
from udp_writer import phase_level

from core.errors import SourceError
from sources.probe import ProbeSource

pytestmark = pytest.mark.timeout(90)


def phase_of(frame) -> int:
    return 0 if frame.image.mean() < 135 else 1


async def test_udp_stream_drop_is_reported_and_the_source_reconnects(spawn, caplog):
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    # 60 frames at 25 fps, 2.5 s of silence, then 40 more frames from a new stream.
    writer = spawn("udp_writer.py", url, 25, 2.5, 60, 40)
    source = ProbeSource(
        url, timeout=1.0, reconnect_initial=0.2, reconnect_max=0.5, max_reconnects=30, open_attempts=30
    )
    frames = []

    async def read() -> None:
        async for frame in source:
            frames.append(frame)
            if sum(phase_of(f) for f in frames) >= 15:
                return

    async with source:
        await asyncio.wait_for(read(), timeout=60)
    assert await asyncio.to_thread(writer.wait, 20) == 0

    phases = [phase_of(f) for f in frames]
    assert phases == sorted(phases) and phases[0] == 0 and phases[-1] == 1
    for phase in (0, 1):  # within a phase, frames arrive in the order they were sent
        levels = [round(float(f.image.mean())) for f in frames if phase_of(f) == phase]
        assert levels == sorted(levels) and min(levels) >= phase_level(phase, 0) - 3
    seqs = [f.seq for f in frames]
    jumps = [b - a - 1 for a, b in zip(seqs, seqs[1:])]
    assert min(jumps) >= 0  # strictly increasing
    back = phases.index(1)
    assert jumps[back - 1] > 25  # the 2.5 s gap at 25 fps shows in seq ...
    assert sum(jumps) == source.counters["gap_frames"]  # ... and nowhere else
    assert source.counters["reconnects"] >= 1 and source.counters["gaps"] == 1
    assert any("feed back after a" in r.getMessage() for r in caplog.records)
    assert all(f.stream == f"probe-{url.rsplit(':', 1)[1]}" and f.image.shape == (48, 64) for f in frames)


async def test_gives_up_after_max_reconnects_with_a_source_error(spawn):
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    spawn("udp_writer.py", url, 25, 0, 50)
    source = ProbeSource(url, timeout=0.5, reconnect_initial=0.1, max_reconnects=2, open_attempts=30, size=16)
    frames = []
    with pytest.raises(SourceError, match=r"cannot open probe udp://.*\(2 attempts\)"):
        async with source:
            async for frame in source:
                frames.append(frame)
    assert frames and all(f.image.shape == (16, 16) for f in frames)
    assert source.counters["reconnects"] == 0


async def test_opencv_capture_reconnects_when_the_device_stops(make_video):
    # OpenCV's VideoCapture reading a file behaves like a device that stops delivering at
    # the end: the source reopens it and frames keep coming, seq still increasing.
    path = make_video("avi", frames=10)
    source = ProbeSource(str(path), reconnect_initial=0.05, max_reconnects=3, gray=False, name="cam")
    frames = []
    async with source:
        async for frame in source:
            frames.append(frame)
            if len(frames) == 25:
                break
    assert [index_of(f.image.mean(axis=2)) for f in frames] == [i % 10 for i in range(25)]
    assert all(a.seq < b.seq for a, b in zip(frames, frames[1:]))
    assert source.counters["reconnects"] == 2 and source.counters["gaps"] == 2
    assert all(f.stream == "cam" and f.image.shape[2] == 3 for f in frames)


async def test_missing_device_fails_after_the_configured_attempts():
    with pytest.raises(SourceError, match=r"cannot open probe /dev/video99: .*\(2 attempts\)"):
        async with ProbeSource("/dev/video99", open_attempts=2, reconnect_initial=0.05):
            pass


async def test_silent_network_stream_fails_after_the_configured_attempts():
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    with pytest.raises(SourceError, match="cannot open probe udp://"):
        async with ProbeSource(url, timeout=0.3, open_attempts=2, reconnect_initial=0.05):
            pass


@pytest.mark.parametrize(
    ("device", "kwargs"),
    [
        (-1, {}),
        ("", {}),
        (0, {"timeout": 0}),
        (0, {"reconnect_initial": 5, "reconnect_max": 1}),
        (0, {"max_reconnects": 0}),
    ],
)
def test_bad_settings(device, kwargs):
    with pytest.raises(SourceError):
        ProbeSource(device, **kwargs)


def test_default_names():
    assert ProbeSource(0).name == "probe0"
    assert ProbeSource("2").name == "probe2"
    assert ProbeSource("/dev/video3").name == "probe3"
    assert ProbeSource("udp://127.0.0.1:5000?fifo_size=10").name == "probe-5000"
    assert ProbeSource("rtsp://scanner.local/live").name == "probe-scanner.local"
