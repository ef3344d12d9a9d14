"""A ZeroMQ frame sender run as a separate process by the ZeroMQ source tests.

    python zmq_peer.py URL PATTERN(pub|push|req) bind|connect SCENARIO [TOPIC]

``req`` is imagezmq's default ImageSender: a REQ socket that waits for the receiver's answer
after every message (it exits non-zero when an answer does not come within 10 s).

The scenarios are built here and imported by the tests, which thereby know exactly which good
frames (and how many bad messages) to expect. A good frame is a flat image whose gray value
identifies it.
"""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import zmq

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


def colour_image(seed: int) -> np.ndarray:
    """A smooth (H, W, 3) uint8 image in OpenCV's BGR order: blue rises along x, red along y
    (``seed`` flips and shifts them), so swapping red and blue changes every gray value."""
    y, x = np.mgrid[0:H, 0:W]
    blue, red = x * 255 // (W - 1), y * 255 // (H - 1)
    if seed % 2:
        blue, red = 255 - blue, 255 - red
    green = np.full_like(blue, 40 + 60 * seed)
    return np.stack([blue, green, red], axis=2).astype(np.uint8)


def colours() -> list[tuple[list[bytes], int | None]]:
    """The same colour images as raw BGR arrays (imagezmq ``send_image``), then as JPEGs
    encoded by OpenCV from the same BGR arrays (imagezmq ``send_jpg``)."""
    raw = [(_imagezmq_array(colour_image(i), "bgr"), i) for i in range(3)]
    jpeg = [(_imagezmq_jpg(cv2.imencode(".jpg", colour_image(i))[1].tobytes(), "jpg"), i) for i in range(3)]
    return raw + jpeg


def colours_rgb() -> list[tuple[list[bytes], int | None]]:
    """The colour images as raw RGB arrays (a sender that converted to RGB first)."""
    return [(_imagezmq_array(np.ascontiguousarray(colour_image(i)[..., ::-1]), "rgb"), i) for i in range(3)]


def corrupt_jpeg(value: int) -> bytes:
    """A JPEG with extraneous bytes before its scan: decodable, but libjpeg warns about it, so the
    strict decoder refuses it (issue #21: corrupt data is never classified silently)."""
    data = cv2.imencode(".jpg", np.full((H, W, 3), value, np.uint8))[1].tobytes()
    sos = data.index(b"\xff\xda")
    return data[:sos] + b"\x00\x11\x22" + data[sos:]


def _bad_headers(rng: np.random.Generator, i: int) -> list[bytes]:
    """One malformed message of kind ``i % 16``, each a way to attack the header parser."""
    good = {"msg": "m", "dtype": "uint8", "shape": [H, W]}
    payload = _gray(1).tobytes()
    body = json.dumps(good)[1:-1]
    depth = int(rng.integers(9, 20000))
    digits = int(rng.integers(21, 2000))
    # built lazily: only the chosen kind is made (some are tens of kilobytes)
    kinds = [
        lambda: [b'{"msg":' + b"[" * depth + b"]" * depth + b"}", payload],  # deep nesting
        lambda: [("{" + body + ',"x":' + '{"a":' * depth + "1" + "}" * depth + "}").encode(), payload],  # deep objects
        lambda: [("{" + body + ',"timestamp":1' + "0" * digits + "}").encode(), payload],  # huge integer
        lambda: [("{" + body + ',"seq":' + "9" * digits + "}").encode(), payload],  # huge seq
        lambda: [("{" + body + ',"timestamp":1e' + str(digits) + "}").encode(), payload],  # float overflow
        lambda: [("{" + body + ',"timestamp":' + rng.choice(["NaN", "Infinity", "-Infinity"]) + "}").encode(), payload],
        lambda: [
            json.dumps({**good, "timestamp": float(rng.choice([1e306, -1e306, 1e12, -5.0]))}).encode(),
            payload,
        ],  # absurd time
        lambda: [json.dumps({**good, "dtype": "u" * int(rng.integers(1000, 60000))}).encode(), payload],  # huge string
        lambda: [json.dumps({**good, "shape": [10**18, 10**18]}).encode(), payload],  # absurd shape
        lambda: [json.dumps({**good, "shape": [H, W, 3]}).encode(), payload],  # size mismatch
        lambda: [rng.bytes(int(rng.integers(1, 300))), rng.bytes(int(rng.integers(0, 300)))],  # random bytes
        lambda: [
            json.dumps({"msg": "m", "jpg": True}).encode(),
            cv2.imencode(".jpg", _gray(9))[1].tobytes()[:100],
        ],  # cut JPEG
        lambda: [json.dumps(["s", None, 5, True][i % 4]).encode(), payload],  # not an object
        lambda: [json.dumps({**good, "seq": "7"}).encode(), payload],  # wrong type
        lambda: [
            rb'{"msg": "\ud800\udfff\u0000", "dtype": ["uint8"], "shape": [24, 32]}',
            payload,
        ],  # odd unicode, list dtype
        lambda: [json.dumps(good).encode()],  # one part
    ]
    return kinds[i % len(kinds)]()


def fuzz(n: int = 3000) -> list[tuple[list[bytes], int | None]]:
    """``n`` messages: every 4th one good (gray, BGR colour, JPEG, a seq pair whose second half
    jumps too far) or a decodable but corrupt JPEG (bad), the rest malformed in every way above. Good
    values are the expected mean gray level; None marks a bad message. The last one is good."""
    rng = np.random.default_rng(11)
    out: list[tuple[list[bytes], int | None]] = []
    for i in range(n - 1):
        if i % 4:
            out.append((_bad_headers(rng, i // 4 * 3 + i % 4), None))
            continue
        kind, value = (i // 4) % 5, int(rng.integers(0, 256))
        if kind == 0:
            out.append((encode_array(_gray(value), msg="g"), value))
        elif kind == 1:  # flat BGR colour, as imagezmq's send_image sends it
            bgr = np.zeros((H, W, 3), np.uint8)
            bgr[...] = rng.integers(0, 256, 3, dtype=np.uint8)
            gray = int(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[0, 0])
            out.append((_imagezmq_array(bgr, "bgr"), gray))
        elif kind == 2:
            out.append((_imagezmq_jpg(_rgb_jpeg(value), "jpg"), value))
        elif kind == 3:  # a good frame, then one whose seq jumps by 10**18 (bad)
            out.append((encode_array(_gray(value), msg="s", seq=0), value))
            out.append((encode_array(_gray(value), msg="s", seq=10**18), None))
        else:
            out.append(([json.dumps({"msg": "c"}).encode(), corrupt_jpeg(value)], None))
    out.append((encode_array(_gray(77), msg="end"), 77))
    return out


SCENARIOS = {"mixed": mixed, "gaps": gaps, "colours": colours, "colours_rgb": colours_rgb, "fuzz": fuzz}


def send_requests(url: str, mode: str, scenario: str) -> None:
    """imagezmq's REQ/REP sender: every message waits for the hub's answer."""
    context = zmq.Context()
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, 10_000)
    (socket.bind if mode == "bind" else socket.connect)(url)
    try:
        for parts, _ in SCENARIOS[scenario]():
            socket.send_multipart(parts)
            if socket.recv() != b"OK":
                sys.exit("the receiver did not answer OK")
    except zmq.Again:
        sys.exit("no answer from the receiver within 10 s")
    finally:
        socket.close()
        context.term()


def main(url: str, pattern: str, mode: str, scenario: str, topic: str = "") -> None:
    if pattern == "req":
        send_requests(url, mode, scenario)
        return
    with FrameSender(url, pattern=pattern, bind=mode == "bind", topic=topic.encode()) as sender:
        if pattern == "pub" and not sender.wait_for_subscriber(timeout=30):
            sys.exit("no subscriber joined within 30 s")
        for parts, _ in SCENARIOS[scenario]():
            sender.send_parts(parts)


if __name__ == "__main__":
    main(*sys.argv[1:])
