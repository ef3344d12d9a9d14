"""Each backbone backend per batch bucket: the first call (what a new input shape costs) and the
steady median, on one device. Prints one JSON object.

    .venv/bin/python benchmarks/bench_embedders.py [--device cpu|cuda[:N]] [--backends torch,onnx]
        [--input-size 224] [--calls 20]

The backends default to every one that can run on the device (torch-cudagraph on CUDA only,
onnx when onnxruntime is installed, and on CUDA only with its CUDA provider).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from core.errors import EngineError
from sampler.model import ModelConfig, build_model
from sources.synthetic import CLASSES
from streamer.inference import EMBEDDERS, resolve_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--backends", default=",".join(EMBEDDERS))
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--calls", type=int, default=20)
    args = p.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = (
        build_model(
            ModelConfig(
                method="das",
                num_frames=32,
                k=16,
                class_names=CLASSES,
                input_size=args.input_size,
                feature_size=56,
                name="bench",
            )
        )
        .eval()
        .to(device)
    )
    out: dict = {"device": str(device), "input_size": args.input_size, "torch": torch.__version__, "backends": {}}
    for name in args.backends.split(","):
        try:
            t = time.perf_counter()
            emb = EMBEDDERS[name](model, device, max_batch=args.max_batch)
            built = time.perf_counter() - t
        except EngineError as exc:
            out["backends"][name] = {"skipped": str(exc)}
            continue
        rows = {}
        for b in sorted(emb.buckets, reverse=True):  # largest first, as warm-up does
            x = np.random.default_rng(b).integers(0, 255, (b, 1, args.input_size, args.input_size), dtype=np.uint8)
            t = time.perf_counter()
            emb.run_bucket(x)
            first = time.perf_counter() - t
            times = []
            for _ in range(args.calls):
                t = time.perf_counter()
                emb.run_bucket(x)
                times.append(time.perf_counter() - t)
            rows[b] = {
                "first_ms": round(1000 * first, 2),
                "median_ms": round(1000 * statistics.median(times), 3),
                "max_ms": round(1000 * max(times), 3),
            }
        out["backends"][name] = {"build_s": round(built, 2), "buckets": rows}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
