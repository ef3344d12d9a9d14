"""Does skipping lost-contact and frozen frames help? Trained frozen-backbone runs re-scored with a guard.

The guard is a rule a runtime can apply as frames arrive, no learning: a frame is *unusable*
when it is near-black (every pixel of the sampler's small copy at most 4 grey levels: lost
contact) or identical to the frame before it (a frozen stream). Unusable frames are marked as
padding, so every sampler picks them only when a window holds fewer than k usable frames, and the
classifier's attention pooling ignores them (Full then classifies only the usable frames).

For every run folder given (``compare --folds`` output with ``train.freeze_backbone``, e.g.
``OUT/foldF/METHOD-keepK-seedS``) the fold's test videos (its ``video-predictions-test.csv``)
are scored at video level, corrupted as the cross-validation corrupted them, without and with the
guard, from the cached frame embeddings (no training). Prints, per method and keep, the mean AUC
and balanced accuracy without and with the guard, the paired difference (guard - none) with its
95 % bootstrap interval, and the share of test frames the guard marks.

    python -m training.protocol.guard_eval --config configs/train_pocus_cv_lite.yaml \
        /work/runs/pocus-cv-lite/fold*/{full,uniform,das}-keep*-seed*
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from sampler.model import SampledClassifier
from training.config import load_config
from training.corruptions import LOST_CONTACT_MAX, StreamCorruption
from training.video_eval import load_whole_videos

from .frozen import EmbeddedVideos, FrozenVideos, evaluate_embedded_videos
from .paired import bootstrap_mean_ci


def unusable(small: np.ndarray) -> np.ndarray:
    """(N,) bool for a video's small frames (N, f, f) uint8: near-black, or equal to the frame before."""
    flat = small.reshape(len(small), -1)
    black = flat.max(axis=1) <= LOST_CONTACT_MAX
    repeat = np.zeros(len(small), dtype=bool)
    repeat[1:] = (flat[1:] == flat[:-1]).all(axis=1)
    return black | repeat


def guarded(ev: EmbeddedVideos) -> tuple[EmbeddedVideos, int, int]:
    """A copy of ``ev`` whose unusable frames are all-zero (padding to every sampler); frames marked, frames."""
    small, marked = [], 0
    for s in ev.small:
        bad = unusable(s)
        marked += int(bad.sum())
        s = s.copy()
        s[bad] = 0
        small.append(s)
    return EmbeddedVideos(small, ev.emb, ev.labels, ev.names), marked, sum(len(s) for s in ev.small)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--config", required=True, help="the compare config the runs were made with (train.freeze_backbone)"
    )
    ap.add_argument("--clean", action="store_true", help="score the clean test videos instead of the corrupted ones")
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    config = load_config(args.config)
    d = config.data
    corruption = StreamCorruption.from_options(d.corruption_options) if d.corruption != "none" else None
    vs = load_whole_videos(d)
    frozen = FrozenVideos(config, vs, corruption, lambda line: print(line, file=sys.stderr))
    variant = frozen.clean if args.clean or frozen.test_bad is None else frozen.test_bad
    index = {n: i for i, n in enumerate(vs.names)}
    t, stride = d.num_frames, d.window_stride or d.num_frames
    scores: dict[tuple, list[tuple[float, float, float, float]]] = defaultdict(list)
    marked = total = 0
    for run in args.runs:
        model = SampledClassifier.load(run / "model.pt", map_location="cpu").eval()
        with (run / "video-predictions-test.csv").open() as f:
            te = [index[row["video"]] for row in csv.DictReader(f)]
        test = variant.take(te)
        guard, m, n = guarded(test)
        marked, total = marked + m, total + n
        plain = evaluate_embedded_videos(model, test, window=t, stride=stride, device="cpu", batch_size=64).scores
        safe = evaluate_embedded_videos(model, guard, window=t, stride=stride, device="cpu", batch_size=64).scores
        key = (model.config.method, round(model.config.k / model.config.num_frames, 3))
        scores[key].append((plain.auc, safe.auc, plain.acc, safe.acc))
    print(
        f"test videos: {'clean' if variant is frozen.clean else 'corrupted'}; the guard marks {100 * marked / total:.1f} % of test frames"
    )
    print(
        f"{'method':<8} {'keep':>6} {'runs':>4}  {'AUC none':>8} {'guard':>6}  {'guard - none [95% CI]':<26} {'bal.acc none':>12} {'guard':>6}"
    )
    for key in sorted(scores):
        a = np.array(scores[key])
        diff, lo, hi = bootstrap_mean_ci(a[:, 1] - a[:, 0])
        print(
            f"{key[0]:<8} {key[1]:>6} {len(a):>4}  {a[:, 0].mean():8.3f} {a[:, 1].mean():6.3f}  "
            f"{diff:+.3f} [{lo:+.3f}, {hi:+.3f}]{'':<4} {a[:, 2].mean():12.1f} {a[:, 3].mean():6.1f}"
        )


if __name__ == "__main__":
    main()
