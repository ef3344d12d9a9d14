"""ONNX Runtime pool threads spinning between runs, or not: wall time and CPU time of bursty calls.

The streaming engine embeds a window's picks once per window, so its backbone calls come in
bursts with idle time between them. This script times such calls with the pool threads allowed
to busy-wait after each run (ONNX Runtime's default) and not allowed (the engine's default).
Each variant runs alone, one after the other, ``--rounds`` times alternating, and prints one
JSON object: per variant and round, the median and p90 call time (ms) and the process CPU
seconds spent over the calls (sleeping included, so spinning shows as CPU time).

    .venv/bin/python benchmarks/bench_ort_spinning.py [--gap 0.3] [--calls 14] [--batch 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from streamer.bench import bench_models
from streamer.inference import Onnx


def run(embedder: Onnx, batch: np.ndarray, *, calls: int, gap: float) -> dict[str, float]:
    embedder(batch)  # warm-up
    times = []
    cpu0 = time.process_time()
    for _ in range(calls):
        time.sleep(gap)
        t0 = time.perf_counter()
        embedder(batch)
        times.append(1000 * (time.perf_counter() - t0))
    cpu = time.process_time() - cpu0
    return {
        "median_ms": round(statistics.median(times), 1),
        "p90_ms": round(float(np.percentile(times, 90)), 1),
        "cpu_seconds": round(cpu, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gap", type=float, default=0.3, help="seconds of idle time before each call")
    p.add_argument("--calls", type=int, default=14)
    p.add_argument("--batch", type=int, default=16, help="frames per call (the picks of one window)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    model = bench_models()["full"]  # MobileNetV3-Small at 224 px, as in the streaming bench
    size = model.config.input_size
    batch = np.random.default_rng(0).integers(0, 256, (args.batch, size, size), dtype=np.uint8)
    cpu = torch.device("cpu")
    embedders = {name: Onnx(model, cpu, threads=args.threads, spinning=name == "spin") for name in ("spin", "no_spin")}
    out: dict[str, list] = {name: [] for name in embedders}
    for _ in range(args.rounds):
        for name, emb in embedders.items():
            out[name].append(run(emb, batch, calls=args.calls, gap=args.gap))
    print(json.dumps({"settings": vars(args), "results": out}, indent=2))


if __name__ == "__main__":
    main()
