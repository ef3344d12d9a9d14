"""What a bucket plan costs: one request of N frames embedded with the plan the embedder chooses,
against one call of the top bucket and against the many-small-calls plan the planner chose before
its tie-break (docs/performance.md, "Quiet re-run"). Interleaved in one process. Prints JSON.

    .venv/bin/python benchmarks/bench_embed_plan.py [--backend onnx|torch] [--frames 16] [--calls 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from sampler.model import ModelConfig, build_model
from sources.synthetic import CLASSES
from streamer.inference import EMBEDDERS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="onnx", choices=[b for b in EMBEDDERS if b != "torch-cudagraph"])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--calls", type=int, default=15)
    a = p.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig(
        method="das",
        num_frames=2 * a.frames,
        k=a.frames,
        class_names=CLASSES,
        feature_size=56,
        input_size=a.input_size,
        name="plan",
    )
    emb = EMBEDDERS[a.backend](build_model(cfg).eval(), torch.device("cpu"), max_batch=a.frames)
    emb.warm_up()
    chosen = emb.plan(a.frames)
    small = tuple([2] * (a.frames // 4) + [1] * (a.frames - 2 * (a.frames // 4)))  # the old tie-break's plan
    plans = {"chosen": chosen, "one_call": (emb.buckets[-1],), "many_small": small}
    frames = np.random.default_rng(0).integers(0, 255, (a.frames, a.input_size, a.input_size), dtype=np.uint8)
    times: dict[str, list[float]] = {k: [] for k in plans}
    for i in range(a.calls + 2):
        for name, plan in plans.items():
            emb.plan = lambda n, plan=plan: plan  # type: ignore[method-assign]  # force this plan
            t = time.perf_counter()
            emb.embed(frames)
            if i >= 2:  # the first two rounds pay any first-shape cost
                times[name].append(1000.0 * (time.perf_counter() - t))
    print(
        json.dumps(
            {
                "backend": a.backend,
                "frames": a.frames,
                "input_size": a.input_size,
                "calls": a.calls,
                "plans": {k: list(v) for k, v in plans.items()},
                "median_ms": {k: round(statistics.median(v), 2) for k, v in times.items()},
                "min_ms": {k: round(min(v), 2) for k, v in times.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
