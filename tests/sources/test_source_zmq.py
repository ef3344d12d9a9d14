"""ZeroMQ source against a real sender in another process (tests/sources/zmq_peer.py)."""

from __future__ import annotations

import asyncio

import pytest
from sources_help import free_port
from zmq_peer import gaps, mixed

from core.errors import SourceError
from sources.zmq_source import ZmqSource

pytestmark = pytest.mark.timeout(60)


async def take(source: ZmqSource, count: int) -> list:
    """The first ``count`` frames (a bounded wait so a lost message fails instead of hanging)."""

    async def run() -> list:
        frames = []
        async for frame in source:
            frames.append(frame)
            if len(frames) == count:
                return frames
        return frames

    return await asyncio.wait_for(run(), timeout=30)


def expected(scenario) -> tuple[list[int], int]:
    messages = scenario()
    good = [value for _, value in messages if value is not None]
    return good, len(messages) - len(good)


def assert_values(frames: list, values: list[int]) -> None:
    """Each frame is flat at its expected gray value (JPEG frames within a few levels)."""
    for frame, value in zip(frames, values, strict=True):
        assert abs(float(frame.image.mean()) - value) <= 2, (frame.seq, value)


async def test_sub_receives_good_frames_in_order_and_counts_every_bad_message(spawn):
    port = free_port()
    peer = spawn("zmq_peer.py", f"tcp://127.0.0.1:{port}", "pub", "bind", "mixed")
    good, bad = expected(mixed)
    async with ZmqSource(f"tcp://127.0.0.1:{port}", pattern="sub") as source:
        frames = await take(source, len(good))
    assert_values(frames, good)
    assert [f.seq for f in frames] == list(range(len(good)))
    assert all(f.stream == f"zmq-{port}" and f.image.shape == (24, 32) for f in frames)
    assert source.counters["bad_messages"] == bad == 14
    assert await asyncio.to_thread(peer.wait, 10) == 0


async def test_pull_binding_receives_from_a_connecting_pusher_in_colour(spawn):
    port = free_port()
    good, bad = expected(mixed)
    async with ZmqSource(f"tcp://127.0.0.1:{port}", pattern="pull", bind=True, gray=False, name="cart") as source:
        peer = spawn("zmq_peer.py", f"tcp://127.0.0.1:{port}", "push", "connect", "mixed")
        frames = await take(source, len(good))
    assert_values(frames, good)
    assert all(f.stream == "cart" and f.image.shape == (24, 32, 3) for f in frames)
    assert source.counters["bad_messages"] == bad
    assert await asyncio.to_thread(peer.wait, 10) == 0


async def test_topic_frames_are_stripped(spawn):
    port = free_port()
    spawn("zmq_peer.py", f"tcp://127.0.0.1:{port}", "pub", "bind", "gaps", "probe-7")
    async with ZmqSource(f"tcp://127.0.0.1:{port}", topic="probe-7", size=(16, 12)) as source:
        frames = await take(source, 5)
    assert [f.image.shape for f in frames] == [(12, 16)] * 5
    assert source.counters["bad_messages"] == 0


async def test_sender_sequence_jumps_show_as_gaps_in_seq(spawn):
    port = free_port()
    spawn("zmq_peer.py", f"tcp://127.0.0.1:{port}", "pub", "bind", "gaps")
    async with ZmqSource(f"tcp://127.0.0.1:{port}") as source:
        frames = await take(source, 5)
    assert [f.seq for f in frames] == [0, 1, 2, 5, 6]
    assert_values(frames, [value for _, value in gaps()])
    assert source.counters["missed_frames"] == 2


async def test_binding_a_port_in_use_is_a_source_error():
    port = free_port()
    async with ZmqSource(f"tcp://127.0.0.1:{port}", pattern="pull", bind=True):
        with pytest.raises(SourceError, match=f"cannot bind ZeroMQ pull socket to tcp://127.0.0.1:{port}"):
            async with ZmqSource(f"tcp://127.0.0.1:{port}", pattern="pull", bind=True):
                pass


@pytest.mark.parametrize(
    ("url", "kwargs", "match"),
    [
        ("udp://127.0.0.1:5", {}, "tcp://HOST:PORT"),
        ("tcp://127.0.0.1:70000", {}, "tcp://HOST:PORT"),
        ("tcp://127.0.0.1:5555", {"pattern": "req"}, "pattern"),
        ("tcp://127.0.0.1:5555", {"pattern": "pull", "topic": "x"}, "topic"),
        ("tcp://127.0.0.1:5555", {"allowed_dtypes": ("float64",)}, "allowed_dtypes"),
        ("tcp://127.0.0.1:5555", {"max_frame_bytes": 0}, "max_frame_bytes"),
    ],
)
def test_bad_settings(url, kwargs, match):
    with pytest.raises(SourceError, match=match):
        ZmqSource(url, **kwargs)
