"""Per-frame cost of the pipeline's FrameQueue.get with the pause timer on (``--gap``), when the
frame is already waiting (the common case) and, for scale, without a timeout. Prints JSON.

    .venv/bin/python benchmarks/bench_frame_queue.py [--frames 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from streamer.pipeline import FrameQueue


async def per_get_us(frames: int, timeout: float | None) -> float:
    queue = FrameQueue(frames, "block")
    for i in range(frames):
        await queue.put(i)  # any object: the queue does not look inside
    t = time.perf_counter()
    for _ in range(frames):
        await queue.get(timeout=timeout)
    return 1e6 * (time.perf_counter() - t) / frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=20000)
    a = p.parse_args()
    print(
        json.dumps(
            {
                "frames": a.frames,
                "get_with_timeout_us": round(asyncio.run(per_get_us(a.frames, 2.0)), 2),
                "get_without_timeout_us": round(asyncio.run(per_get_us(a.frames, None)), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
