"""Cost of each classifier backbone per frame on this CPU: forward pass (inference mode) of a
batch of frames through ``FrameClassifier.embed``, median over repeats, in ms per frame.

    PYTHONPATH=. python benchmarks/bench_backbones.py --threads 2 --batch 16 --repeats 5

Prints one JSON object: {backbone@size: {"ms_per_frame": ..., "params_M": ...}, ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from sampler.classifier import FrameClassifier

CASES = [
    ("tiny_cnn", 32),
    ("tiny_cnn", 112),
    ("mobilenet_v3_small", 112),
    ("mobilenet_v3_small", 224),
    ("efficientnet_lite0", 112),
    ("efficientnet_lite0", 224),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = {}
    for name, size in CASES:
        clf = FrameClassifier(3, input_size=size, backbone=name).eval()
        x = torch.rand(args.batch, 1, size, size)
        times = []
        with torch.inference_mode():
            clf.embed(x)  # warm-up
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                clf.embed(x)
                times.append(time.perf_counter() - t0)
        params = sum(q.numel() for q in clf.backbone.parameters()) / 1e6
        out[f"{name}@{size}"] = {
            "ms_per_frame": round(1000 * statistics.median(times) / args.batch, 2),
            "params_M": round(params, 2),
        }
    print(json.dumps({"threads": args.threads, "batch": args.batch, "results": out}, indent=1))


if __name__ == "__main__":
    main()
