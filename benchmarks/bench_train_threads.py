"""Training epoch and frame-embedding time with 1 and 2 torch threads, alternated in one process.

What ``train.threads: 0`` (half the cores, 1 on a 2-core machine) rests on (docs/data.md). On a
machine whose cores other processes share, a second intra-op thread waits on the busy core at
every parallel region; this measures how much that costs here, now. Prints one line per repeat
and the medians, with the load average before and after.

    PYTHONPATH=. nice -n 5 python benchmarks/bench_train_threads.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from sampler.model import ModelConfig, build_model
from training.clips import ClipSet, DatasetSplits
from training.config import TrainSettings
from training.loop import fit
from training.protocol.frozen import embed_frames


def epoch_seconds(threads: int, data: DatasetSplits, backbone: str, size: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            method="full",
            num_frames=data.num_frames,
            k=data.num_frames,
            class_names=("a", "b", "c"),
            feature_size=size // 2,
            input_size=size,
            backbone=backbone,
            backbone_weights="none",
        )
    )
    settings = TrainSettings(epochs=1, patience=1, batch_size=16, progress=False, threads=threads)
    t0 = time.perf_counter()
    fit(model, data, settings, device=torch.device("cpu"), log=lambda _: None)
    return time.perf_counter() - t0


def embed_ms(threads: int, frames: np.ndarray, size: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            method="full", num_frames=16, k=16, class_names=("a", "b"), input_size=size, backbone_weights="none"
        )
    )
    t0 = time.perf_counter()
    embed_frames(model.classifier, frames)
    return 1000 * (time.perf_counter() - t0) / len(frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clips", type=int, default=75, help="training clips per epoch (POCUS fixed split: 75)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)

    def clips(n: int, size: int) -> ClipSet:
        return ClipSet(
            rng.integers(0, 255, (n, 16, size, size), dtype=np.uint8),
            np.ones((n, 16), bool),
            np.arange(n) % 3,
            tuple(map(str, range(n))),
        )

    cases = {
        "epoch tiny_cnn 32 px (s)": (
            lambda t, d=DatasetSplits(clips(args.clips, 32), clips(25, 32), clips(25, 32), ("a", "b", "c")): (
                epoch_seconds(t, d, "tiny_cnn", 32)
            )
        ),
        "epoch mobilenet_v3_small 112 px (s)": (
            lambda t, d=DatasetSplits(clips(args.clips, 112), clips(25, 112), clips(25, 112), ("a", "b", "c")): (
                epoch_seconds(t, d, "mobilenet_v3_small", 112)
            )
        ),
        "embed mobilenet_v3_small 224 px (ms/frame)": (
            lambda t, f=rng.integers(0, 255, (128, 224, 224), dtype=np.uint8): embed_ms(t, f, 224)
        ),
    }
    print(f"cores {len(os.sched_getaffinity(0))}, load average before {os.getloadavg()}", flush=True)
    times: dict[str, dict[int, list[float]]] = {name: {1: [], 2: []} for name in cases}
    for r in range(args.repeats):
        for name, run in cases.items():
            order = (1, 2) if r % 2 == 0 else (2, 1)  # alternate which goes first
            for threads in order:
                times[name][threads].append(run(threads))
            print(
                f"repeat {r} {name}: 1 thread {times[name][1][-1]:.2f}, 2 threads {times[name][2][-1]:.2f}",
                flush=True,
            )
    print(f"load average after {os.getloadavg()}")
    for name, by in times.items():
        ratios = [b / a for a, b in zip(by[1], by[2])]
        print(
            f"{name}: median 1 thread {statistics.median(by[1]):.2f}, 2 threads {statistics.median(by[2]):.2f}; "
            f"2/1 ratio median {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
