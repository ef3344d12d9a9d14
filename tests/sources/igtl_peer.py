"""An OpenIGTLink server run as a separate process by the OpenIGTLink source tests.

    python igtl_peer.py PORT stream [FIRST]   pyigtl's OpenIGTLinkServer: frame i (from FIRST)
                                              as a gray IMAGE of device "US" (every pixel = i %
                                              250), an RGB IMAGE of device "Color" (rgb_of(i)),
                                              and a TRANSFORM of device "Probe", until killed
    python igtl_peer.py PORT bad              a plain socket server sending BAD (pyigtl-packed
                                              messages, some spoiled) to its first client

The server binds before it prints "ready".
"""

from __future__ import annotations

import signal
import socket
import sys
import time

import numpy as np
from pyigtl import ImageMessage, OpenIGTLinkServer, StringMessage, TransformMessage

H, W = 12, 16


def gray_of(i: int) -> np.ndarray:
    return np.full((1, H, W), i % 250, np.uint8)  # (k, j, i): one slice


def rgb_of(i: int) -> np.ndarray:
    pixel = np.array([i % 250, 255 - i % 250, 40], np.uint8)
    return np.broadcast_to(pixel, (1, H, W, 3)).copy()


def _spoil_crc(packed: bytes) -> bytes:
    data = bytearray(packed)
    data[57] ^= 0xFF  # last byte of the header's CRC-64
    return bytes(data)


def bad() -> list[tuple[bytes, int | None]]:
    """(packed message, the gray value a receiver should deliver, or None when it must skip it)."""
    gray = lambda v, **kw: ImageMessage(np.full((1, H, W), v, np.uint8), device_name=kw.get("device", "US"))  # noqa: E731
    return [
        (gray(10).pack(), 10),
        (_spoil_crc(gray(11).pack()), None),  # CRC mismatch
        (ImageMessage(np.full((1, H, W), 1000, np.uint16), device_name="US").pack(), None),  # not uint8
        (ImageMessage(np.full((3, H, W), 12, np.uint8), device_name="US").pack(), None),  # a volume
        (ImageMessage(np.full((1, H, W, 4), 13, np.uint8), device_name="US").pack(), None),  # 4 components
        (StringMessage("hello", device_name="US").pack(), None),  # not an IMAGE
        (TransformMessage(np.eye(4), device_name="Probe").pack(), None),  # not an IMAGE
        (gray(14, device="Other").pack(), None),  # another device
        (ImageMessage(np.full((H, W), 15, np.uint8), device_name="US").pack(), 15),  # plain 2-D array
        (ImageMessage(np.zeros((1, 0, 0), np.uint8), device_name="US").pack(), None),  # 0x0 (issue #21)
        (ImageMessage(np.zeros((1, 0, W), np.uint8), device_name="US").pack(), None),  # no rows
        (ImageMessage(np.zeros((1, H, 0, 3), np.uint8), device_name="US").pack(), None),  # no columns, RGB
        (gray(16).pack(), 16),
    ]


def serve_stream(port: int, first: int) -> None:
    server = OpenIGTLinkServer(port=port, local_server=True)
    print("ready", flush=True)
    for i in range(first, first + 1_000_000):
        # wait=True returns once the message went out: nothing is queued while no client is there
        server.send_message(ImageMessage(gray_of(i), device_name="US"), wait=True)
        server.send_message(ImageMessage(rgb_of(i), device_name="Color"), wait=True)
        server.send_message(TransformMessage(np.eye(4), device_name="Probe"), wait=True)
        time.sleep(0.01)


def serve_bad(port: int) -> None:
    with socket.create_server(("127.0.0.1", port)) as listener:
        print("ready", flush=True)
        connection, _ = listener.accept()
        with connection:
            connection.sendall(b"".join(packed for packed, _ in bad()))
            signal.pause()  # keep the connection open until killed


if __name__ == "__main__":
    port, scenario = int(sys.argv[1]), sys.argv[2]
    if scenario == "stream":
        serve_stream(port, int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    else:
        serve_bad(port)
