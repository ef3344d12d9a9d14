"""OpenIGTLink source against real servers in another process (tests/sources/igtl_peer.py):
pyigtl's OpenIGTLinkServer streaming gray and RGB IMAGE messages, and a plain socket server
sending spoiled messages."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest
from igtl_peer import H, W, bad, rgb_of
from pyigtl import ImageMessage
from pyigtl.messages import MessageBase
from sources_help import free_port

from core.errors import SourceError
from sources.guard import BadMessage
from sources.igtl import IgtlSource, image_of
from sources.spec import parse_source

pytestmark = pytest.mark.timeout(60)


async def take(source: IgtlSource, count: int) -> list:
    """The next ``count`` frames (a bounded wait, so a lost message fails instead of hanging)."""

    async def run() -> list:
        frames = []
        async for frame in source:
            frames.append(frame)
            if len(frames) == count:
                break
        return frames

    return await asyncio.wait_for(run(), timeout=20)


async def start(spawn, port: int, *args: object):
    """A peer process, once it listens (read off the event loop: sources keep running)."""
    peer = spawn("igtl_peer.py", port, *args)
    assert (await asyncio.to_thread(peer.stdout.readline)).strip() == b"ready"
    return peer


def values(frames: list) -> list[int]:
    """The gray value of each frame, which must be flat."""
    assert all(f.image.min() == f.image.max() for f in frames)
    return [int(f.image[0, 0]) for f in frames]


async def test_gray_images_of_one_device_arrive_in_order_under_its_name(spawn):
    port = free_port()
    await start(spawn, port, "stream")
    async with parse_source(f"igtl://127.0.0.1:{port}?device=US") as source:
        frames = await take(source, 8)
    assert source.name == "US" and all(f.stream == "US" for f in frames)
    assert values(frames) == list(range(8))  # every image, none lost or repeated
    assert [f.seq for f in frames] == list(range(8))
    assert all(f.image.shape == (H, W) and f.image.dtype == np.uint8 for f in frames)
    assert source.counters["ignored_messages"] >= 14  # Color images and Probe transforms
    assert source.counters["bad_messages"] == 0


async def test_rgb_images_as_rgb_and_as_gray(spawn):
    port = free_port()
    await start(spawn, port, "stream")
    async with IgtlSource("127.0.0.1", port, device="Color", gray=False) as source:
        colour = await take(source, 4)
    async with IgtlSource("127.0.0.1", port, device="Color", size=(8, 6)) as source:
        gray = await take(source, 4)
    first = int(colour[0].image[0, 0, 0])
    for i, frame in enumerate(colour):
        assert np.array_equal(frame.image, rgb_of(first + i)[0])
    assert all(f.image.shape == (6, 8) for f in gray)
    # gray frames are OpenCV's RGB -> gray of images k0, k0 + 1, ... for some first index k0
    level = [int(cv2.cvtColor(rgb_of(i)[0], cv2.COLOR_RGB2GRAY)[0, 0]) for i in range(300)]
    got = values(gray)
    assert any(level[k0 : k0 + 4] == got for k0 in range(250)), got


async def test_without_a_device_the_first_device_is_kept(spawn):
    port = free_port()
    await start(spawn, port, "stream")
    async with parse_source(f"igtl://127.0.0.1:{port}", gray=False) as source:
        frames = await take(source, 6)
    assert source.name == f"igtl-{port}" and source.device_name == "US"
    assert all(f.image.shape == (H, W, 3) and (f.image[..., 0] == f.image[..., 2]).all() for f in frames)  # gray ones


@pytest.mark.parametrize("size", [None, (8, 6)])
async def test_unusable_messages_are_counted_and_skipped(spawn, size):
    # Before issue #21's fix a 0x0 IMAGE ended the stream: with a size, OpenCV's resize assertion
    # came out of the source; without one, the empty frame reached the pipeline.
    port = free_port()
    await start(spawn, port, "bad")
    expected = [v for _, v in bad() if v is not None]
    async with IgtlSource("127.0.0.1", port, device="US", size=size) as source:
        frames = await take(source, len(expected))
    assert values(frames) == expected == [10, 15, 16]
    assert all(f.image.shape == ((H, W) if size is None else (6, 8)) for f in frames)
    assert source.counters["bad_messages"] == 7  # CRC, uint16, volume, 4 components, 0x0, 0 rows, 0 columns
    assert source.counters["ignored_messages"] == 3  # STRING, TRANSFORM, another device


async def test_reconnects_after_the_server_restarts(spawn):
    port = free_port()
    first = await start(spawn, port, "stream")
    source = IgtlSource("127.0.0.1", port, device="US", reconnect_initial=0.1, reconnect_max=0.4, queue_size=64)
    async with source:
        before = await take(source, 3)
        first.terminate()
        await asyncio.to_thread(first.wait, 10)
        await start(spawn, port, "stream", 100)  # the new server counts from 100
        after = await take(source, 30)
    assert values(before) == [0, 1, 2]
    got = values(after)
    restarted = got.index(100)  # frames the first server sent before it died come first
    first_left = 3 + source.counters["overflow"]  # (if the buffer overflowed meanwhile, the oldest went)
    assert got[:restarted] == list(range(first_left, first_left + restarted))
    assert got[restarted:] == list(range(100, 100 + len(got) - restarted))
    seqs = [f.seq for f in before + after]
    assert all(b > a for a, b in zip(seqs, seqs[1:]))
    # a connection may first land on the dying server's backlog: then two reconnections, one gap
    assert source.counters["reconnects"] >= 1 and source.counters["gaps"] == 1
    assert seqs[3 + restarted] - seqs[2 + restarted] == 1 + source.counters["gap_frames"]


async def test_no_server_is_a_one_line_error_after_the_attempts():
    port = free_port()
    source = IgtlSource("127.0.0.1", port, open_attempts=2, reconnect_initial=0.05)
    with pytest.raises(
        SourceError, match=rf"cannot open OpenIGTLink server igtl://127.0.0.1:{port}: .*\(2 attempts\); check HOST:PORT"
    ):
        async with source:
            pass


def test_image_of_accepts_2d_slices_and_refuses_the_rest():
    def roundtrip(array: np.ndarray) -> ImageMessage:
        sent = ImageMessage(array, device_name="US")
        received = ImageMessage()
        packed = sent.pack()
        received.unpack(MessageBase.parse_header(packed[:58]), packed[58:])
        return received

    image = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    assert np.array_equal(image_of(roundtrip(image[None])), image)  # (k=1, rows, columns)
    assert np.array_equal(image_of(roundtrip(image)), image)  # pyigtl's plain 2-D array
    rgb = np.stack([image, image // 2, image // 3], axis=-1)
    assert np.array_equal(image_of(roundtrip(rgb[None])), rgb)
    for array, reason in [
        (image.astype(np.uint16)[None], "uint16 pixels; send uint8"),
        (np.stack([image] * 3), "volume; send 2-D images"),
        (np.zeros((1, H, W, 2), np.uint8), "2 components; send 1 \\(gray\\) or 3 \\(RGB\\)"),
    ]:
        with pytest.raises(BadMessage, match=reason):
            image_of(roundtrip(array))


def test_spec_forms_and_options():
    source = parse_source("igtl://127.0.0.1:18945?device=Image_Reference&timeout=2&check_crc=0", size=64)
    assert isinstance(source, IgtlSource)
    assert (source.host, source.port, source.device_name, source.name) == (
        "127.0.0.1",
        18945,
        "Image_Reference",
        "Image_Reference",
    )
    assert source.timeout == 2.0 and source.check_crc is False
    assert parse_source("igtl://127.0.0.1").port == 18944
    assert parse_source("igtl://127.0.0.1:5000", name="probe-a").name == "probe-a"
    with pytest.raises(SourceError, match="unknown option 'fps'"):
        parse_source("igtl://127.0.0.1:5000?fps=3")
    with pytest.raises(SourceError, match="speed, no-pacing and loop apply to replayed sources"):
        parse_source("igtl://127.0.0.1:5000", loop=True)
    with pytest.raises(SourceError, match="is not igtl://HOST:PORT"):
        parse_source("igtl://127.0.0.1:99999")
    with pytest.raises(SourceError, match="device name 'x+' must be 1-20 bytes"):
        parse_source("igtl://127.0.0.1:5000?device=" + "x" * 21)
