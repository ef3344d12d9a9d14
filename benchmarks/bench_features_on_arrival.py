"""The sampler step at window close, with each frame's sampler features made as it arrives (the
engine's default for DAS and ADPS) against made at the close from the window's copies.

Two engines on the same DAS model (T = 32, 224 px, 56 px features, k = 16), interleaved window by
window on fresh frames: the frames of a window are handed over with ``accept`` and handled while
the worker is idle, then the window is processed. Prints one JSON object: per variant, the p50 and
the minimum of the engine's "sampler" stage (ms), and the windows timed.

    .venv/bin/python benchmarks/bench_features_on_arrival.py [--backend auto] [--windows 25]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from streamer.bench import FrameMaker, bench_models, windows_of
from streamer.inference import InferenceEngine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="auto")
    p.add_argument("--windows", type=int, default=25)
    args = p.parse_args()
    model = bench_models()["das@0.5"]
    engines = {
        "on_arrival": InferenceEngine(model, device="cpu", backend=args.backend),
        "at_close": InferenceEngine(model, device="cpu", backend=args.backend),
    }
    engines["at_close"].features_on_arrival = False
    maker = FrameMaker(model.config.input_size)
    T = model.config.num_frames
    for _ in range(args.windows + 1):
        for eng in engines.values():
            frames = maker.frames(T)
            for f in frames:
                eng.accept("bench", f)
            eng.on_worker(lambda: None)  # the frames have arrived and been handled
            time.sleep(0.05)
            eng.process(windows_of(frames, T, T))
    out = {}
    for name, eng in engines.items():
        ms = list(eng.stage_ms["sampler"])[1:]  # the first window warms up
        out[name] = {
            "sampler_p50_ms": round(statistics.median(ms), 2),
            "sampler_min_ms": round(min(ms), 2),
            "windows": len(ms),
        }
    print(
        json.dumps({"backend": engines["at_close"].backend, "torch_threads": torch.get_num_threads(), **out}, indent=2)
    )


if __name__ == "__main__":
    main()
