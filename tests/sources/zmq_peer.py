"""A ZeroMQ frame sender run as a separate process by the ZeroMQ source tests.

    python zmq_peer.py URL PATTERN(pub|push) bind|connect SCENARIO [TOPIC]

The scenarios are built here and imported by the tests, which thereby know exactly which good
frames (and how many bad messages) to expect. A good frame is a flat image whose gray value
identifies it.
"""
from __future__ import annotations

import json
import sys

import cv2
import numpy as np

from sources.wire import FrameSender, encode_array, encode_jpg

H, W = 24, 32


def _gray(value: int) -> np.ndarray:
    return np.full((H, W), value, np.uint8)


def _rgb_jpeg(value: int) -> bytes:
    ok, buffer = cv2.imencode(".jpg", np.full((H, W, 3), value, np.uint8))
    assert ok
    return buffer.tobytes()


def _jpeg_claiming(height: int, width: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) claims another size."""
    data = bytearray(_rgb_jpeg(0))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def _imagezmq_array(array: np.ndarray, msg: str) -> list[bytes]:
    """Exactly what imagezmq's send_array puts on the wire."""
    return [json.dumps(dict(msg=msg, dtype=str(array.dtype), shape=array.shape)).encode(), array.tobytes()]


def _imagezmq_jpg(jpeg: bytes, msg: str) -> list[bytes]:
    """Exactly what imagezmq's send_jpg puts on the wire."""
    return [json.dumps(dict(msg=msg)).encode(), jpeg]


def mixed() -> list[tuple[list[bytes], int | None]]:
    """Good frames (with the gray value they show) interleaved with every kind of bad message
    (None); the last message is good, so its arrival means all earlier ones were handled."""
    header = lambda **h: json.dumps(h).encode()  # noqa: E731
    rng = np.random.default_rng(7)
    return [
        (encode_array(_gray(0), msg="a", seq=0), 0),
        ([rng.bytes(200)], None),  # random bytes, one part
        (_imagezmq_array(np.full((H, W, 3), 10, np.uint8), "pi"), 10),
        ([b"{not json", _gray(1).tobytes()], None),
        (encode_jpg(_gray(20), msg="b"), 20),
        ([header(msg="m", dtype="uint8", shape=[H, W]), b"\0" * 100], None),  # size does not match shape
        ([header(msg="m", dtype="uint8", shape=[100000, 100000, 3]), b"\0" * 10], None),  # huge claim
        (_imagezmq_jpg(_rgb_jpeg(30), "pi"), 30),
        ([header(msg="m", dtype="float64", shape=[H, W]), b"\0" * (H * W * 8)], None),  # dtype not allowed
        ([header(msg="m", dtype="uint8", shape=[H, W]), _gray(2).tobytes(), b"extra"], None),  # three parts
        ([b"[1, 2]", _gray(3).tobytes()], None),  # header not an object
        ([header(msg="m", jpg=True), _jpeg_claiming(60000, 60000)], None),  # decompression bomb
        ([header(msg="m", jpg=True), rng.bytes(500)], None),  # not a JPEG
        ([header(msg="m", dtype="uint8", shape=[H, W, 4]), b"\0" * (H * W * 4)], None),  # 4 channels
        ([header(msg="m", dtype="uint8", shape=[H * W]), b"\0" * (H * W)], None),  # rank 1
        ([b"\xff\xfe\xfd", _gray(4).tobytes()], None),  # header not UTF-8
        ([header(msg="m", dtype="uint8", shape=[H, W], seq=-1), _gray(5).tobytes()], None),  # bad seq
        ([b" " * 70000, _gray(6).tobytes()], None),  # header over the size cap
        (encode_array(np.full((H, W, 1), 40, np.uint8), msg="c", seq=7), 40),
        (encode_array(_gray(50), msg="d", seq=8), 50),
    ]


def gaps() -> list[tuple[list[bytes], int | None]]:
    """Frames with sender sequence numbers 0, 1, 2, 5, 6 (3 and 4 never sent)."""
    return [(encode_array(_gray(10 * s), seq=s), 10 * s) for s in (0, 1, 2, 5, 6)]


SCENARIOS = {"mixed": mixed, "gaps": gaps}


def main(url: str, pattern: str, mode: str, scenario: str, topic: str = "") -> None:
    with FrameSender(url, pattern=pattern, bind=mode == "bind", topic=topic.encode()) as sender:
        if pattern == "pub" and not sender.wait_for_subscriber(timeout=30):
            sys.exit("no subscriber joined within 30 s")
        for parts, _ in SCENARIOS[scenario]():
            sender.send_parts(parts)


if __name__ == "__main__":
    main(*sys.argv[1:])
