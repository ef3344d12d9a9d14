"""Per-window cost of the frame features, of every sampler, and of the classifier on k vs T frames.

Prints one JSON object per device (CPU, and CUDA when present). Times are medians in
milliseconds over ``--repeats`` runs after a warm-up, in eval mode under ``torch.no_grad``.

    .venv/bin/python benchmarks/bench_sampler.py [--num-frames 32] [--k 8] [--size 224] [--threads N]

Keys:
- ``features``: :func:`sampler.features.frame_features` of one window, from the full-resolution
  uint8 window (gray and RGB) and from the feature-resolution gray copy a streaming runtime caches.
- ``select``: each sampler's ``select`` (no gathering) on the full-resolution and on the cached
  copy; ``forward`` adds the gather ``P @ X`` of the full-resolution frames.
- ``classifier``: MobileNetV3-Small embedding of the k picked frames and of all T frames, and the
  attention pooling + head alone.
- ``ratios``: the targets: features (cached copy) / backbone on k frames, and DAS select
  (cached copy) / classifier on T frames, both meant to stay under 0.05.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sampler.classifier import FrameClassifier
from sampler.features import frame_features
from sampler.model import METHODS, build_sampler


def median_ms(fn: Callable[[], object], *, device: torch.device, repeats: int, warmup: int = 3) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times), 3)


@torch.no_grad()
def bench_device(device: torch.device, *, num_frames: int, k: int, size: int, feature_size: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    gray = torch.randint(0, 256, (1, num_frames, 1, size, size), dtype=torch.uint8, generator=gen).to(device)
    rgb = torch.randint(0, 256, (1, num_frames, 3, size, size), dtype=torch.uint8, generator=gen).to(device)
    cached = F.interpolate(gray.flatten(0, 1).float(), size=(feature_size, feature_size), mode="area")
    cached = cached.round().to(torch.uint8).view(1, num_frames, 1, feature_size, feature_size)
    gray_float = gray.float() / 255.0

    def timed(fn: Callable[[], object]) -> float:
        return median_ms(fn, device=device, repeats=repeats)

    features = {
        f"full_res_gray_{size}px": timed(lambda: frame_features(gray, feature_size)),
        f"full_res_rgb_{size}px": timed(lambda: frame_features(rgb, feature_size)),
        f"cached_gray_{feature_size}px": timed(lambda: frame_features(cached, feature_size)),
    }

    torch.manual_seed(0)
    select: dict[str, dict[str, float]] = {}
    for method in METHODS:
        sampler = (
            build_sampler(method, num_frames, num_frames if method == "full" else k, feature_size).to(device).eval()
        )
        select[method] = {
            f"select_full_res_{size}px": timed(lambda: sampler.select(gray)),
            f"select_cached_{feature_size}px": timed(lambda: sampler.select(cached)),
            "forward_full_res_with_gather": timed(lambda: sampler(gray_float)),
        }

    clf = FrameClassifier(2, input_size=size).to(device).eval()
    frames = gray_float[0]  # (T, 1, S, S), already at input_size
    emb = clf.embed(frames[:k]).unsqueeze(0)
    classifier = {
        f"embed_k{k}": timed(lambda: clf.embed(frames[:k])),
        f"embed_T{num_frames}": timed(lambda: clf.embed(frames)),
        "pool_and_head": timed(lambda: clf.classify(emb)),
    }
    classifier_t = classifier[f"embed_T{num_frames}"] + classifier["pool_and_head"]
    ratios = {
        "features_cached_over_backbone_k": round(
            features[f"cached_gray_{feature_size}px"] / classifier[f"embed_k{k}"], 4
        ),
        "features_full_res_gray_over_backbone_k": round(
            features[f"full_res_gray_{size}px"] / classifier[f"embed_k{k}"], 4
        ),
        "das_select_cached_over_classifier_T": round(
            select["das"][f"select_cached_{feature_size}px"] / classifier_t, 4
        ),
        "das_select_full_res_over_classifier_T": round(select["das"][f"select_full_res_{size}px"] / classifier_t, 4),
    }
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "num_frames": num_frames,
        "k": k,
        "size": size,
        "feature_size": feature_size,
        "features_ms": features,
        "sampler_ms": select,
        "classifier_ms": classifier,
        "ratios": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-frames", type=int, default=32)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--size", type=int, default=224, help="frame side of the full-resolution window")
    parser.add_argument("--feature-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        result = bench_device(
            device,
            num_frames=args.num_frames,
            k=args.k,
            size=args.size,
            feature_size=args.feature_size,
            repeats=args.repeats,
        )
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
