"""What watching a run costs: the observer's per-call time, and the input rate of an un-paced
synthetic replay through the bundled demo model with and without the observer (its web view and
/metrics polled by a client at a browser's cadence: state every 0.5 s, the live image at 4 fps, the
window's thumbnails when it changes, /metrics every second).

Prints one JSON object. Variants alternate for ``--rounds`` rounds (other work on the machine
shifts every round alike).

    .venv/bin/python benchmarks/bench_observe.py [--frames 960] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp
import cv2
import numpy as np

from sampler.model import SampledClassifier
from sinks.messages import Prediction
from sources.frame import Frame
from sources.synthetic import SyntheticSource, make_clip
from streamer.app import demo_model_path
from streamer.inference import InferenceEngine
from streamer.observe import Observer
from streamer.pipeline import Pipeline, PipelineSettings
from streamer.stats import StreamStats
from streamer.window import Window


def per_call(n: int = 100_000) -> dict[str, float]:
    """Microseconds per on_frame / on_window call, per live JPEG (112 px gray, and a 640x480 probe
    image at the view's size), and per stats snapshot (sent to the observer with every window)."""
    from streamer.observe.view import encode_jpeg

    o = Observer(streams=["s"])
    img = np.random.default_rng(0).integers(0, 255, (112, 112), dtype=np.uint8)
    frames = [Frame("s", i, time.time(), img) for i in range(16)]
    t0 = time.perf_counter()
    for i in range(n):
        o.on_frame("s", frames[i % 16])
    t1 = time.perf_counter()

    class Result:
        window = Window(stream="s", index=0, num_frames=16, frames=tuple(frames), retire=(), t_close=time.time())
        selected = tuple(range(0, 16, 2))

    p = Prediction(
        stream="s",
        window=0,
        first_seq=0,
        last_seq=15,
        t_first=0.0,
        t_last=time.time(),
        selected=Result.selected,
        probs={"a": 0.2, "b": 0.3, "c": 0.5},
        label="c",
        model="m",
        latency_ms=1.0,
    )
    m = n // 10
    t2 = time.perf_counter()
    for _ in range(m):
        o.on_window(Result, p)
    t3 = time.perf_counter()
    for _ in range(1000):
        encode_jpeg(img, 256)
    t4 = time.perf_counter()
    clip = make_clip("b_lines", 1, size=240, rng=np.random.default_rng(1), empty_run_prob=0.0)
    probe = cv2.resize(clip[0], (640, 480), interpolation=cv2.INTER_LINEAR)  # a probe's own image
    for _ in range(200):
        encode_jpeg(probe, o.view.live_size)
    t5a = time.perf_counter()
    for _ in range(200):
        encode_jpeg(probe, 320)  # the size an eighth of a 1920x1080 screen asks for
    t5 = time.perf_counter()
    stats = StreamStats(stream="s", num_frames=16)  # the snapshot sent with every window: full deques
    for i in range(4096):
        stats.frame_in()
        stats.published(t_capture_last=time.time() - 0.1, t_close=time.time() - 0.05, padded=i % 50 == 0)
    t6 = time.perf_counter()
    for _ in range(200):
        stats.snapshot()
    t7 = time.perf_counter()
    return {
        "on_frame_us": round(1e6 * (t1 - t0) / n, 2),
        "on_window_us": round(1e6 * (t3 - t2) / m, 2),
        "live_jpeg_us": round(1e6 * (t4 - t3) / 1000, 1),
        "live_jpeg_640x480_us": round(1e6 * (t5a - t4) / 200, 1),
        "live_jpeg_640x480_at_320_us": round(1e6 * (t5 - t5a) / 200, 1),
        "stats_snapshot_us": round(1e6 * (t7 - t6) / 200, 1),
    }


async def poll(observer: Observer, stop: asyncio.Event) -> int:
    """A browser's requests; returns how many were answered."""
    url, murl = observer.urls["web"], observer.urls["metrics"]
    done, shown, tick = 0, None, 0
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            async with s.get(url + "/api/state") as r:
                state = await r.json()
            for name, info in state["streams"].items():
                async with s.get(f"{url}/live/{name}.jpg") as r:
                    await r.read()
                w = info["window"]
                if w and w["index"] != shown:
                    async with s.get(f"{url}/api/window/{name}") as r:
                        await r.read()
                    shown = w["index"]
                    done += 1
            if tick % 2 == 0:
                async with s.get(murl + "/metrics") as r:
                    await r.read()
                done += 1
            done += 2
            tick += 1
            await asyncio.sleep(0.25)
    return done


async def one_run(engine: InferenceEngine, frames: int, observe: bool) -> dict[str, float]:
    source = SyntheticSource(name="synthetic", pacing=False, size=engine.input_size, frames=frames)
    observers = [Observer(streams=["synthetic"], web="127.0.0.1:0", metrics="127.0.0.1:0")] if observe else []
    pipe = Pipeline(
        sources=[(source, "block")],
        engine=engine,
        sinks=[],
        observers=observers,
        settings=PipelineSettings(stride=engine.num_frames),
    )
    requests = 0
    t0 = time.perf_counter()
    if observe:
        async with observers[0]:
            stop = asyncio.Event()
            poller = asyncio.create_task(poll(observers[0], stop))
            summary = await pipe.run()
            stop.set()
            requests = await poller
    else:
        summary = await pipe.run()
    elapsed = time.perf_counter() - t0
    final = summary.final["synthetic"]
    return {"fps": round(final.frames_in / elapsed, 1), "requests": requests}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=960)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    engine = InferenceEngine(SampledClassifier.load(demo_model_path()), device="cpu")
    asyncio.run(one_run(engine, 64, False))  # warm-up
    runs: dict[str, list] = {"without": [], "with_observer": []}
    for _ in range(args.rounds):
        runs["without"].append(asyncio.run(one_run(engine, args.frames, False)))
        runs["with_observer"].append(asyncio.run(one_run(engine, args.frames, True)))
    out = {
        "per_call": per_call(),
        "frames": args.frames,
        "runs": runs,
        "median_fps": {k: statistics.median(r["fps"] for r in v) for k, v in runs.items()},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
