"""Early exit for training and evaluation: a model's predictions after every round of its
best-first order, scored at video level, and the calibration of the exit rule.

For each window the sampler's order is computed once (eval mode, :meth:`Sampler.order`); the
pooled prediction after the first j frames, for every j of the round ladder
(:func:`core.exit.rounds`: 1, 2, 4, ..., k_max), is what the runtime would publish if it stopped
there. From those predictions, with no further model call: the scores at fixed k, the cheapest
exit threshold whose validation AUC stays within a tolerance of k_max's (:func:`calibrate`), and
a rule's operating point (mean frames embedded per window, video-level AUC).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from core.exit import NEVER, ExitRule, exit_round, frames_used, rounds
from sampler.features import frame_validity
from sampler.model import SampledClassifier

from .metrics import classification_scores
from .video_eval import aggregate_video_probs

DEFAULT_TOLERANCE = 0.005
"""The AUC an early exit may lose against k_max on validation (issue #23's default)."""


@dataclass(frozen=True, eq=False)
class PrefixProbs:
    """Class probabilities of every window after each round of its best-first order.

    Attributes:
        probs: (W, R, C), round r pooling the first ``ladder[r]`` frames of the order.
        usable: (W,) usable (real, non-empty) frames per window.
        ladder: the prefix sizes (1, 2, 4, ..., k_max).
    """

    probs: np.ndarray
    usable: np.ndarray
    ladder: tuple[int, ...]


@torch.inference_mode()
def prefix_probs(
    model: SampledClassifier, clips: Any, *, device: torch.device | str = "cpu", batch_size: int = 64
) -> PrefixProbs:
    """:class:`PrefixProbs` of ``clips``: a ``ClipSet`` (items ``(x, valid, label)``, frames
    embedded here by the model's backbone) or an ``EmbeddedClipSet`` (``(x, emb, valid, label)``,
    the frozen backbone's embeddings)."""
    model.eval().to(device)
    ladder = rounds(model.sampler.k)
    probs, usable_counts = [], []
    for batch in DataLoader(clips, batch_size=batch_size, shuffle=False):
        x = batch[0].to(device).float().div_(255.0)
        valid = batch[-2].to(device)
        usable = frame_validity(x, valid)
        order = model.sampler.order(x, valid)
        if len(batch) == 4:
            emb = model.classifier.project(batch[1].to(device).float())
        else:
            b, t = x.shape[:2]
            emb = model.classifier.embed(x.flatten(0, 1)).view(b, t, -1)
        rows = []
        for j in ladder:
            idx = order[:, :j]
            picked = emb.gather(1, idx.unsqueeze(2).expand(-1, -1, emb.shape[2]))
            logits = model.classifier.classify(picked, usable.gather(1, idx))
            rows.append(torch.softmax(logits.float(), dim=1))
        probs.append(torch.stack(rows, dim=1).cpu().numpy())
        usable_counts.append(usable.sum(dim=1).cpu().numpy())
    return PrefixProbs(np.concatenate(probs), np.concatenate(usable_counts), ladder)


@dataclass(frozen=True)
class Windows:
    """Windows scored at video level: which video each window belongs to, and the videos' labels."""

    owner: np.ndarray  # (W,) video index of each window
    labels: np.ndarray  # (V,) class of each video


def video_scores(window_probs: np.ndarray, w: Windows) -> tuple[float, float]:
    """(AUC, balanced accuracy %) of the videos whose probabilities are their windows' means."""
    s = classification_scores(w.labels, aggregate_video_probs(window_probs, w.owner, len(w.labels)))
    return s.auc, s.acc


def window_auc(window_probs: np.ndarray, w: Windows) -> float:
    """The AUC of the windows themselves (each window labelled with its video's class): what each
    published prediction scores."""
    return classification_scores(w.labels[w.owner], window_probs).auc


def operating_point(pp: PrefixProbs, w: Windows, rule: ExitRule) -> dict[str, float]:
    """Video-level AUC and accuracy, window-level AUC and the mean frames per window under ``rule``."""
    at = exit_round(pp.probs, rule)
    used = frames_used(pp.ladder, at, pp.usable)
    probs = pp.probs[np.arange(len(at)), at]
    auc, acc = video_scores(probs, w)
    return {
        "auc": auc,
        "acc": acc,
        "window_auc": window_auc(probs, w),
        "mean_frames": float(used.mean()) if len(used) else 0.0,
        "exited_early": float((at < len(pp.ladder) - 1).mean()) if len(at) else 0.0,
    }


def fixed_k(pp: PrefixProbs, w: Windows) -> list[dict[str, float]]:
    """Video-level scores at every round of the ladder (the frames actually usable counted)."""
    out = []
    for r, j in enumerate(pp.ladder):
        auc, acc = video_scores(pp.probs[:, r], w)
        out.append({"k": j, "auc": auc, "acc": acc, "mean_frames": float(np.minimum(j, pp.usable).mean())})
    return out


def calibrate(pp: PrefixProbs, w: Windows, *, tolerance: float = DEFAULT_TOLERANCE, candidates: int = 200) -> ExitRule:
    """The cheapest ``max_prob`` rule whose validation AUC is within ``tolerance`` of k_max's, at
    video level and at window level.

    Both, because each published prediction is a window's: a video-level AUC that saturates at
    1.0 (a few easy videos, many windows each) would let a rule through that gets many windows
    wrong. Candidate thresholds are quantiles of the top probabilities seen after every round
    (and "never", which always qualifies); the one with the fewest mean frames per window wins,
    ties going to the higher AUC. The rule records the tolerance and the validation figures."""
    ref_auc, ref_acc = video_scores(pp.probs[:, -1], w)
    ref_window = window_auc(pp.probs[:, -1], w)
    tops = pp.probs.max(axis=2).ravel()
    grid = np.unique(np.quantile(tops, np.linspace(0.0, 1.0, candidates))) if tops.size else np.array([])
    best = ExitRule(threshold=NEVER)
    best_point = operating_point(pp, w, best)
    for t in grid:
        if not 0.0 < t <= 1.0:
            continue
        rule = ExitRule(threshold=float(t))
        point = operating_point(pp, w, rule)
        ok = (math.isnan(ref_auc) or point["auc"] >= ref_auc - tolerance) and (
            math.isnan(ref_window) or point["window_auc"] >= ref_window - tolerance
        )
        if ok and (point["mean_frames"], -point["auc"]) < (best_point["mean_frames"], -best_point["auc"]):
            best, best_point = rule, point
    figures = {
        "val_auc_k_max": ref_auc,
        "val_acc_k_max": ref_acc,
        "val_auc": best_point["auc"],
        "val_acc": best_point["acc"],
        "val_window_auc_k_max": ref_window,
        "val_window_auc": best_point["window_auc"],
        "val_mean_frames": best_point["mean_frames"],
        "k_max": pp.ladder[-1],
        "windows": len(pp.usable),
    }
    return ExitRule(threshold=best.threshold, tolerance=tolerance, calibration=figures)


def windows_of_clips(clips: Any) -> Windows:
    """Video-level grouping of a split's clips: clips named ``video#window`` (windows cut from
    whole videos) are grouped by video; every other clip is its own video."""
    videos = [str(n).rsplit("#", 1)[0] for n in clips.names]
    index = {v: i for i, v in enumerate(dict.fromkeys(videos))}
    owner = np.array([index[v] for v in videos], dtype=np.int64)
    labels = np.zeros(len(index), dtype=np.int64)
    labels[owner] = np.asarray(clips.labels)
    return Windows(owner, labels)


def calibrate_clips(
    model: SampledClassifier, clips: Any, *, device: torch.device | str = "cpu", tolerance: float = DEFAULT_TOLERANCE
) -> ExitRule:
    """:func:`calibrate` on a split's clips (video-level where clips are windows of videos)."""
    return calibrate(prefix_probs(model, clips, device=device), windows_of_clips(clips), tolerance=tolerance)
