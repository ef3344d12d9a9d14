"""A model package against its torch model on the ONNX engine: the same pipeline, side by side.

For one torch model file (default: the bundled demo) and its package (exported here unless
--package is given), in one process, alternating the two variants round by round on the same
inputs so a slow spell of the machine hits both:

- throughput: a 640x480 H.264 clip replayed with no pacing through decode, window, sampler,
  backbone, head (input frames per second);
- latency: the same clip paced at 30 fps: window close -> published, p50 and p99;
- start-up: `das-stream run` in a fresh process until its first printed prediction (the package
  never imports torch), and the engine's build + warm-up time.

Prints one JSON object; the medians of the per-round ratios (package / torch) with their range.

    nice -n 5 python benchmarks/bench_package.py --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sampler.export import export_package
from sampler.model import SampledClassifier
from sampler.package import PackageModel
from streamer.app import demo_model_path
from streamer.bench import make_video, replay
from streamer.inference import InferenceEngine
from training.export_check import check_windows


def first_prediction_s(model: Path, engine: str) -> float:
    """Seconds from starting `das-stream run` to its first prediction line on stdout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "das_stream.cli", "run", "--model", str(model), "--engine", engine, "--duration", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return round(time.perf_counter() - t0, 2)
    finally:
        proc.kill()  # the figure is taken; nothing to flush
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(demo_model_path()), help="torch model file (default: the demo)")
    parser.add_argument("--package", help="its package (default: exported here)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=600, help="frames of the throughput clip")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of each paced latency run")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of both (default: theirs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = SampledClassifier.load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(args.package) if args.package else None
        if package is None:
            package = Path(tmp) / "model.dasp"
            export_package(model, package, *check_windows(model), source=args.model)
        video = make_video(Path(tmp) / "bench.mp4", frames=args.frames)
        t0 = time.perf_counter()
        engines = {"torch+onnx": InferenceEngine(model, device="cpu", backend="onnx", threads=args.threads)}
        built = {"torch+onnx": time.perf_counter() - t0}
        t0 = time.perf_counter()
        engines["package"] = InferenceEngine(PackageModel(package, device="cpu"), threads=args.threads)
        built["package"] = time.perf_counter() - t0
        rounds = []
        for r in range(args.rounds):
            order = list(engines) if r % 2 == 0 else list(reversed(engines))
            row: dict = {}
            for name in order:
                eng = engines[name]
                fast = asyncio.run(replay(eng, video, pacing=False, mqtt=None, stride=eng.num_frames))
                paced = asyncio.run(
                    replay(eng, video, pacing=True, mqtt=None, stride=eng.num_frames, duration=args.seconds)
                )
                row[name] = {
                    "fps_in": fast["fps_in"],
                    "close_p50_ms": paced["latency_close_ms"]["p50"],
                    "close_p99_ms": paced["latency_close_ms"]["p99"],
                    "dropped_paced": paced["dropped"],
                }
            rounds.append(row)
        startup = {
            "torch+onnx": first_prediction_s(Path(args.model), "onnx"),
            "package": first_prediction_s(package, "auto"),
        }

    def ratios(key: str) -> dict:
        values = [row["package"][key] / row["torch+onnx"][key] for row in rounds if row["torch+onnx"][key]]
        return {"median": round(statistics.median(values), 3), "range": [round(min(values), 3), round(max(values), 3)]}

    print(
        json.dumps(
            {
                "model": args.model,
                "package": str(package) if args.package else "exported here",
                "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
                "rounds": rounds,
                "package_over_torch": {key: ratios(key) for key in ("fps_in", "close_p50_ms", "close_p99_ms")},
                "engine_build_and_warm_up_s": {k: round(v, 2) for k, v in built.items()},
                "run_to_first_prediction_s": startup,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
