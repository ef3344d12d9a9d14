"""Curves, not one point: a model's score at every frame count of its best-first order, and the
operating point of a calibrated early exit, for every run of ``compare --folds``.

From each window's predictions after every round (:mod:`training.exits`): the video-level AUC and
balanced accuracy at fixed k = 1, 2, 4, ... (one model, every k: ``train.k_schedule: random``),
the exit rule calibrated on the run's validation windows, and its operating point on the test
windows (mean frames embedded per window, video-level AUC).

Each run folder of ``compare --folds`` gets a ``curve.json``; :func:`write_curve_summaries`
tabulates them per method (mean over folds x seeds), pairs methods by (fold, seed) with
bootstrap intervals (:mod:`.paired`), and draws AUC against mean frames per window.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.exit import rounds
from sampler.model import SampledClassifier

from ..exits import DEFAULT_TOLERANCE, Windows, calibrate, fixed_k, operating_point, prefix_probs
from ..report import METHOD_LABELS
from .paired import bootstrap_mean_ci

CURVE_FILE = "curve.json"


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
    """Every ``curve.json`` under a ``compare`` output folder (``fold*/RUN/`` with ``--folds``,
    ``RUN/`` without), with its run's identity."""
    rows = []
    for path in sorted([*out.glob("*/" + CURVE_FILE), *out.glob("fold*/*/" + CURVE_FILE)]):
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
    its early exit, and Full (every frame) as a band: its mean with the 95 % bootstrap interval
    of that mean over folds x seeds."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if len(full):
        m, lo, hi = bootstrap_mean_ci(full)
        if math.isnan(lo):
            lo = hi = m
        ax.axhspan(lo, hi, color="0.85", label=f"Full (all frames) {m:.3f} [{lo:.3f}, {hi:.3f}]")
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
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
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
        base.with_suffix(".md").write_text(markdown(rows, title=f"{name} ({variant} test set)"))
        plot(rows, base.with_suffix(".png"), title=f"{name}: {variant} test set", full=full)
        written += [base.with_suffix(".md"), base.with_suffix(".png")]
    return written
