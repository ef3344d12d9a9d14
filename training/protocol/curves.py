"""Curves, not one point: a model's score at every frame count of its best-first order, and the
operating point of a calibrated early exit.

For each window the sampler's order is computed once (eval mode, :meth:`Sampler.order`); the
pooled prediction after the first j frames, for every j of the round ladder
(:func:`core.exit.rounds`: 1, 2, 4, ..., k_max), is what the runtime would publish if it stopped
there. From those predictions, with no further model call:

- **fixed k**: the video-level AUC and balanced accuracy at k = 1, 2, 4, ... (one model, every
  k: train it with ``train.k_schedule: random``);
- **calibration** (:func:`calibrate`): on the validation windows, the cheapest exit threshold
  (fewest frames per window) whose video-level AUC stays within ``tolerance`` of the AUC at
  k_max;
- **early exit**: that rule applied to the test windows: the mean frames embedded per window
  and the video-level AUC it gives.

Each run folder of ``compare --folds`` gets a ``curve.json``; :func:`write_curve_summaries`
tabulates them per method (mean over folds x seeds), pairs methods by (fold, seed) with
bootstrap intervals (:mod:`.paired`), and draws AUC against mean frames per window.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from core.exit import NEVER, ExitRule, exit_round, frames_used, rounds
from sampler.features import frame_validity
from sampler.model import SampledClassifier

from ..metrics import classification_scores
from ..report import METHOD_LABELS
from ..video_eval import aggregate_video_probs
from .paired import bootstrap_mean_ci

CURVE_FILE = "curve.json"
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


def operating_point(pp: PrefixProbs, w: Windows, rule: ExitRule) -> dict[str, float]:
    """Video-level AUC and accuracy and the mean frames per window under ``rule``."""
    at = exit_round(pp.probs, rule)
    used = frames_used(pp.ladder, at, pp.usable)
    auc, acc = video_scores(pp.probs[np.arange(len(at)), at], w)
    return {
        "auc": auc,
        "acc": acc,
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
    """The cheapest ``max_prob`` rule whose validation AUC is within ``tolerance`` of k_max's.

    Candidate thresholds are quantiles of the top probabilities seen after every round (and
    "never", which always qualifies); the one with the fewest mean frames per window wins, ties
    going to the higher AUC. The rule records the tolerance and the validation figures."""
    ref_auc, ref_acc = video_scores(pp.probs[:, -1], w)
    tops = pp.probs.max(axis=2).ravel()
    grid = np.unique(np.quantile(tops, np.linspace(0.0, 1.0, candidates))) if tops.size else np.array([])
    best = ExitRule(threshold=NEVER)
    best_point = operating_point(pp, w, best)
    for t in grid:
        if not 0.0 < t <= 1.0:
            continue
        rule = ExitRule(threshold=float(t))
        point = operating_point(pp, w, rule)
        ok = math.isnan(ref_auc) or point["auc"] >= ref_auc - tolerance
        if ok and (point["mean_frames"], -point["auc"]) < (best_point["mean_frames"], -best_point["auc"]):
            best, best_point = rule, point
    figures = {
        "val_auc_k_max": ref_auc,
        "val_acc_k_max": ref_acc,
        "val_auc": best_point["auc"],
        "val_acc": best_point["acc"],
        "val_mean_frames": best_point["mean_frames"],
        "k_max": pp.ladder[-1],
        "windows": len(pp.usable),
    }
    return ExitRule(threshold=best.threshold, tolerance=tolerance, calibration=figures)


def run_curve(
    model: SampledClassifier,
    val: tuple[Any, Windows],
    tests: dict[str, tuple[Any, Windows]],
    *,
    device: torch.device | str = "cpu",
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """Calibrate on ``val`` (clips, windows) and score every test variant (name -> (clips,
    windows)) at fixed k and at the early exit: what ``curve.json`` holds."""
    rule = calibrate(prefix_probs(model, val[0], device=device), val[1], tolerance=tolerance)
    out: dict[str, Any] = {"ladder": list(rounds(model.sampler.k)), "exit": rule.to_dict(), "test": {}}
    for name, (clips, w) in tests.items():
        pp = prefix_probs(model, clips, device=device)
        out["test"][name] = {"fixed": fixed_k(pp, w), "exit": operating_point(pp, w, rule)}
    return out


# --- summaries ---------------------------------------------------------------------------------


def read_curves(out: Path) -> list[dict[str, Any]]:
    """Every ``curve.json`` under a ``compare --folds`` output folder, with its run's identity."""
    rows = []
    for path in sorted(out.glob("fold*/*/" + CURVE_FILE)):
        curve = json.loads(path.read_text())
        result = json.loads((path.parent / "result.json").read_text())
        curve.update(
            {
                "method": result["method"],
                "keep": result["keep"],
                "seed": result["seed"],
                "fold": result.get("fold", -1),
                "k_max": result["k"],
                "num_frames": result["num_frames"],
            }
        )
        rows.append(curve)
    return rows


def _points(curves: Sequence[dict[str, Any]], variant: str) -> dict[tuple[str, str], dict[tuple[int, int], dict]]:
    """(method, point) -> {(fold, seed): {"auc", "acc", "mean_frames"}}; points "k=J" and "exit"."""
    table: dict[tuple[str, str], dict[tuple[int, int], dict]] = defaultdict(dict)
    for c in curves:
        if variant not in c["test"]:
            continue
        key = (c["fold"], c["seed"])
        for p in c["test"][variant]["fixed"]:
            table[(c["method"], f"k={p['k']}")][key] = p
        table[(c["method"], "exit")][key] = c["test"][variant]["exit"]
    return table


def summary_rows(
    curves: Sequence[dict[str, Any]], variant: str, *, baselines: Sequence[str] = ("uniform", "random")
) -> list[dict[str, Any]]:
    """Per method and point (k = 1, 2, ..., exit): mean frames, AUC and accuracy (mean and std over
    folds x seeds), and DAS minus each baseline at that point, paired by (fold, seed)."""
    table = _points(curves, variant)
    rows = []
    for (method, point), runs in sorted(table.items(), key=lambda kv: (_order(kv[0][0]), _point_key(kv[0][1]))):
        aucs = [r["auc"] for r in runs.values()]
        row = {
            "method": method,
            "point": point,
            "runs": len(runs),
            "mean_frames": float(np.mean([r["mean_frames"] for r in runs.values()])),
            "auc_mean": float(np.nanmean(aucs)),
            "auc_std": float(np.nanstd(aucs)),
            "acc_mean": float(np.mean([r["acc"] for r in runs.values()])),
        }
        if method == "das":
            for base in baselines:
                other = table.get((base, point), {})
                keys = sorted(set(runs) & set(other))
                diffs = [runs[k]["auc"] - other[k]["auc"] for k in keys]
                mean, lo, hi = bootstrap_mean_ci(diffs)
                row[f"das_minus_{base}"] = {
                    "mean": mean,
                    "low": lo,
                    "high": hi,
                    "pairs": len(keys),
                    "frames_minus": float(np.mean([runs[k]["mean_frames"] - other[k]["mean_frames"] for k in keys]))
                    if keys
                    else math.nan,
                }
        rows.append(row)
    return rows


def _order(method: str) -> int:
    return list(METHOD_LABELS).index(method) if method in METHOD_LABELS else len(METHOD_LABELS)


def _point_key(point: str) -> int:
    return 10**6 if point == "exit" else int(point.removeprefix("k="))


def markdown(rows: Sequence[dict[str, Any]], *, title: str) -> str:
    """The summary rows as a Markdown table (DAS's paired differences in the last columns)."""
    lines = [
        f"### {title}",
        "",
        "| method | point | frames/window | AUC | bal. acc | DAS − Uniform | DAS − Random |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = []
        for base in ("uniform", "random"):
            d = r.get(f"das_minus_{base}")
            cells.append(
                "" if d is None or math.isnan(d["mean"]) else f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            )
        lines.append(
            f"| {METHOD_LABELS.get(r['method'], r['method'])} | {r['point']} | {r['mean_frames']:.2f} | "
            f"{r['auc_mean']:.3f} ± {r['auc_std']:.3f} | {r['acc_mean']:.1f} | {cells[0]} | {cells[1]} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: Path, *, title: str, full: Sequence[float] = ()) -> None:
    """AUC against mean frames per window: a line per method over its fixed-k points, a star at
    its early exit, and Full (every frame) as a band (mean ± std over folds x seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if len(full):
        m, s = float(np.mean(full)), float(np.std(full))
        ax.axhspan(m - s, m + s, color="0.85", label=f"Full (all frames) {m:.3f} ± {s:.3f}")
        ax.axhline(m, color="0.5", lw=1)
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["method"] != "full":
            by_method[r["method"]].append(r)
    for method, rs in by_method.items():
        fixed = [r for r in rs if r["point"] != "exit"]
        line = ax.plot(
            [r["mean_frames"] for r in fixed],
            [r["auc_mean"] for r in fixed],
            marker="o",
            label=f"{METHOD_LABELS.get(method, method)} (fixed k)",
        )[0]
        for r in rs:
            if r["point"] == "exit":
                ax.plot(
                    [r["mean_frames"]],
                    [r["auc_mean"]],
                    marker="*",
                    ms=14,
                    color=line.get_color(),
                    ls="none",
                    label=f"{METHOD_LABELS.get(method, method)} early exit ({r['mean_frames']:.2f} frames)",
                )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("mean frames embedded per window (log scale)")
    ax.set_ylabel("video-level AUC (mean over folds x seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_curve_summaries(out: Path, name: str) -> list[Path]:
    """``<name>-curves[-<variant>].md/.json/.png`` from every ``curve.json`` under ``out``."""
    curves = read_curves(out)
    written: list[Path] = []
    variants = sorted({v for c in curves for v in c["test"]})
    for variant in variants:
        rows = summary_rows(curves, variant)
        suffix = "" if variant == "clean" else f"-{variant}"
        full = [
            r["auc"]
            for c in curves
            if c["method"] == "full" and variant in c["test"]
            for r in c["test"][variant]["fixed"][-1:]
        ]
        base = out / f"{name}-curves{suffix}"
        base.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
        base.with_suffix(".md").write_text(markdown(rows, title=f"{name} ({variant} test videos)"))
        plot(rows, base.with_suffix(".png"), title=f"{name}: {variant} test videos", full=full)
        written += [base.with_suffix(".md"), base.with_suffix(".png")]
    return written
