"""Both ends of the ZeroMQ overload test, each run as its own process.

    python zmq_overload.py send URL SECONDS SIZE      push SIZE x SIZE uint8 frames as fast as
                                                      ZeroMQ takes them; print how many were sent
    python zmq_overload.py receive URL SIZE           bind a PULL ZmqSource, take frames slowly
                                                      (20 ms each) until none came for 1.5 s;
                                                      print one JSON line of figures

The receiver samples its own resident set size every 20 ms. ``rss_base`` is taken once the first
frame is in (libraries loaded, the first frame buffers allocated), ``rss_peak`` is the largest
sample after it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

import numpy as np
import zmq

from sources.zmq_source import ZmqSource

PAGE = 4096


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def send(url: str, seconds: str, size: str) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 2)  # the sender itself holds little: the load is on the receiver
    sock.connect(url)
    frame = np.random.default_rng(0).integers(0, 256, (int(size), int(size)), dtype=np.uint8)
    header = json.dumps({"msg": "big", "dtype": "uint8", "shape": list(frame.shape)}).encode()
    sent, end = 0, time.monotonic() + float(seconds)
    while time.monotonic() < end:
        sock.send_multipart([header, frame], copy=False)
        sent += 1
    sock.close(linger=-1)  # deliver everything queued
    context.term()
    print(sent)


async def receive(url: str, size: str) -> None:
    source = ZmqSource(url, pattern="pull", bind=True, size=64, max_frame_bytes=int(size) ** 2)
    peak, base, frames = 0, None, 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            if base is not None:
                peak = max(peak, rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    async with source:
        print("ready", flush=True)
        iterator = aiter(source)
        while True:
            try:
                await asyncio.wait_for(anext(iterator), 1.5 if frames else 30)
            except TimeoutError:
                break
            frames += 1
            if base is None:
                base = rss()
            await asyncio.sleep(0.02)  # a slow consumer: the reader must keep up and drop
    done.set()
    sampler.join()
    print(json.dumps({"frames": frames, "rss_base": base, "rss_peak": max(peak, base or 0), **source.counters}))


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(*sys.argv[2:])
    else:
        asyncio.run(receive(*sys.argv[2:]))
