"""Where do the samplers pick? An audit of trained cross-validation runs on corrupted test videos.

For every run folder given (``compare --folds`` output: ``OUT/foldF/METHOD-keepK-seedS``), the
test videos of that fold (its ``video-predictions-test.csv``) are corrupted exactly as the
cross-validation corrupted them (``data.corruption_seed``, one generator per video index), cut
into the runtime windows (T, stride), and the run's sampler picks from each window at the
sampler's feature resolution (eval mode, as the test scores were computed). Every picked frame is
put in one class, by comparing the corrupted video with the clean one:

- ``black``: lost contact (the frame changed and is near-black, max grey level <= 4);
- ``repeat``: a frozen frame (changed, and equal to the previous corrupted frame);
- ``other``: any other change (gain, noise, blur);
- ``clean``: unchanged.

It prints, per method and keep (summed over the folders given), the share of picks in each class
next to the share of all window frames in each class (what a blind picker gets on average), and
how far apart the picks are (mean gap between consecutive picks, in frames) and how many picks
repeat the content of another pick of the same window (``dup``: a frozen run picked twice).

``--train-draws N`` also draws N training-mode selections per window (the Gumbel exploration
the sampler was trained with, at ``--noise`` times the standard noise) and reports ``train=eval``:
the share of those training picks that are also inference picks of the same window. A low share
means the classifier was trained on other frames than those it is scored on.

    python -m training.protocol.pick_audit --config configs/train_pocus_cv_lite.yaml \
        /work/runs/pocus-cv-lite/fold*/{uniform,das}-keep0.25-seed0 /work/runs/pocus-cv-lite-seg/fold*/das-keep0.25-seed0
"""

from __future__ import annotations

import argparse
import copy
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from sampler.model import SampledClassifier
from training.clips import cut_windows
from training.config import load_config
from training.corruptions import LOST_CONTACT_MAX, StreamCorruption, corrupt_videos
from training.video_eval import load_whole_videos

from .frozen import shrink

CLASSES = ("black", "repeat", "other", "clean")


def frame_classes(clean: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """(N,) index into CLASSES for each frame of a corrupted video ``bad`` (N, H, W)."""
    changed = (clean != bad).reshape(len(bad), -1).any(axis=1)
    black = changed & (bad.reshape(len(bad), -1).max(axis=1) <= LOST_CONTACT_MAX)
    repeat = np.zeros(len(bad), dtype=bool)
    repeat[1:] = changed[1:] & (bad[1:] == bad[:-1]).reshape(len(bad) - 1, -1).all(axis=1)
    out = np.full(len(bad), 3)
    out[changed] = 2
    out[repeat] = 1
    out[black] = 0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="the compare config the runs were made with")
    ap.add_argument(
        "--label", action="append", default=[], help="DIR_PREFIX=NAME: report runs under DIR_PREFIX as NAME"
    )
    ap.add_argument("--train-draws", type=int, default=0, help="training-mode draws per window (0: none)")
    ap.add_argument("--noise", type=float, default=1.0, help="noise scale of those draws (1: standard Gumbel)")
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    if args.train_draws < 0:
        ap.error(f"--train-draws must be 0 or more, got {args.train_draws}")
    config = load_config(args.config)
    d = config.data
    spec = StreamCorruption.from_options(d.corruption_options)
    vs = load_whole_videos(d)
    index = {n: i for i, n in enumerate(vs.names)}
    labels = [tuple(s.split("=", 1)) for s in args.label]
    t, stride = d.num_frames, d.window_stride or d.num_frames
    counts: dict[tuple, np.ndarray] = defaultdict(lambda: np.zeros(len(CLASSES)))
    base: dict[tuple, np.ndarray] = defaultdict(lambda: np.zeros(len(CLASSES)))
    gaps: dict[tuple, list[float]] = defaultdict(list)
    dups: dict[tuple, int] = defaultdict(int)
    agree: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for run in args.runs:
        model = SampledClassifier.load(run / "model.pt", map_location="cpu").eval()
        size = model.config.feature_size
        name = next((n for p, n in labels if str(run).startswith(p)), model.config.method)
        key = (name, round(model.config.k / model.config.num_frames, 3))
        explorer = copy.deepcopy(model.sampler).train()  # train mode on a copy: BatchNorm statistics stay the model's
        explorer.noise_scale = args.noise
        with (run / "video-predictions-test.csv").open() as f:
            names = [row["video"] for row in csv.DictReader(f)]
        for n in names:
            i = index[n]
            if i not in cache:
                bad = corrupt_videos([vs.videos[i]], spec, seed=d.corruption_seed, ids=[i])[0]
                cache[i] = (shrink(bad, size), frame_classes(vs.videos[i], bad))
            small, cls = cache[i]
            x, valid = cut_windows(small, t, stride)
            c, _ = cut_windows(cls, t, stride)
            frames, mask = torch.from_numpy(x)[:, :, None].float() / 255.0, torch.from_numpy(valid)
            with torch.no_grad():
                picks = model.sampler.select(frames, mask).indices.numpy()
                for _ in range(args.train_draws):
                    drawn = explorer.select(frames, mask).indices.numpy()
                    agree[key][0] += sum(
                        len(set(a[valid[w][a]]) & set(b)) for w, (a, b) in enumerate(zip(drawn, picks))
                    )
                    agree[key][1] += int(valid[np.arange(len(x))[:, None], drawn].sum())
            for w in range(len(x)):
                real = picks[w][valid[w][picks[w]]]
                counts[key] += np.bincount(c[w][real], minlength=len(CLASSES))
                base[key] += np.bincount(c[w][valid[w]], minlength=len(CLASSES))
                if len(real) > 1:
                    gaps[key].append(float(np.diff(real).mean()))
                    picked = x[w][real].reshape(len(real), -1)
                    dups[key] += len(real) - len(np.unique(picked, axis=0))
    print(
        f"{'sampler':<14} {'keep':>6}  "
        + "  ".join(f"{c:>14}" for c in CLASSES)
        + "  mean gap    dup"
        + ("  train=eval" if args.train_draws else "")
    )
    for key in sorted(counts):
        share, rate = counts[key] / counts[key].sum(), base[key] / base[key].sum()
        cells = "  ".join(f"{100 * s:5.1f}% ({100 * r:4.1f})" for s, r in zip(share, rate))
        same = f"  {100 * agree[key][0] / max(agree[key][1], 1):9.1f}%" if args.train_draws else ""
        print(
            f"{key[0]:<14} {key[1]:>6}  {cells}  {np.mean(gaps[key]):8.2f}  {100 * dups[key] / counts[key].sum():4.1f}%{same}"
        )
    print(
        "each cell: share of the picks (share of all window frames); picks counted over every test window of every run given"
    )


if __name__ == "__main__":
    main()
