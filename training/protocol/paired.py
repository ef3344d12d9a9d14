"""Paired comparisons between methods over folds x seeds, with percentile bootstrap intervals.

Two runs are a pair when they share fold and seed (same training, validation and test videos,
same initialisation seed); the difference of their test scores removes what the split and the
seed do to both. The interval is a 95 % percentile bootstrap of the mean difference over the
pairs (``scipy.stats.bootstrap``, seeded). Pairs of one fold share its test set, so the interval
is, if anything, too narrow when seeds are many and folds few; with one seed per fold it is the
usual fold-level bootstrap.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap

from ..report import METHOD_LABELS, RunResult, SummaryRow, keep_label
from ..runs import keep_of

PAIRED_COLUMNS = ("dataset", "keep", "method", "baseline", "metric", "diff_mean", "ci_low", "ci_high", "pairs", "wins")


def bootstrap_mean_ci(
    values: Sequence[float], *, level: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile bootstrap interval; NaN bounds for fewer than 2."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    if np.all(x == x[0]):
        return mean, mean, mean
    res = bootstrap(
        (x,),
        np.mean,
        confidence_level=level,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass(frozen=True)
class PairedDiff:
    """``method`` minus ``baseline`` on one metric, over the (fold, seed) pairs both ran."""

    dataset: str
    keep: float
    method: str
    baseline: str
    metric: str
    diff_mean: float
    ci_low: float
    ci_high: float
    pairs: int
    wins: int


def _score(r: RunResult, metric: str) -> float:
    return float(getattr(r.test, metric))


def paired_diff(
    results: Sequence[RunResult], method: str, baseline: str, keep: float, *, metric: str = "auc", seed: int = 0
) -> PairedDiff | None:
    """The paired difference ``method(keep) - baseline`` (Full: keep 1) over shared (fold, seed)."""

    def pick(m: str) -> dict[tuple[int, int], RunResult]:
        k = keep_of(m, keep)
        return {(getattr(r, "fold", -1), r.seed): r for r in results if r.method == m and math.isclose(r.keep, k)}

    a, b = pick(method), pick(baseline)
    keys = sorted(set(a) & set(b))
    if not keys:
        return None
    diffs = [_score(a[k], metric) - _score(b[k], metric) for k in keys]
    mean, low, high = bootstrap_mean_ci(diffs, seed=seed)
    dataset = a[keys[0]].dataset
    return PairedDiff(
        dataset, keep, method, baseline, metric, mean, low, high, len(keys), int(sum(d > 0 for d in diffs))
    )


def paired_table(results: Sequence[RunResult], *, focus: str = "das") -> list[PairedDiff]:
    """``focus`` - Uniform, - Random, - Full (and every other method, Full included, - Uniform)
    per keep, AUC and acc."""
    methods = {r.method for r in results}
    keeps = sorted({r.keep for r in results if r.method != "full"})
    out = []
    for keep in keeps:
        for metric in ("auc", "acc"):
            pairs = [(focus, b) for b in ("uniform", "random", "full", "dps", "adps") if b != focus]
            pairs += [(m, "uniform") for m in sorted(methods) if m not in (focus, "uniform", "full")]
            pairs += [("full", "uniform")] if focus != "full" else []
            for m, b in pairs:
                if m in methods and b in methods:
                    d = paired_diff(results, m, b, keep, metric=metric)
                    if d is not None:
                        out.append(d)
    return out


def write_paired_csv(diffs: Sequence[PairedDiff], path: Path) -> None:
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PAIRED_COLUMNS)
        for d in diffs:
            w.writerow(
                [
                    d.dataset,
                    f"{d.keep:g}",
                    d.method,
                    d.baseline,
                    d.metric,
                    f"{d.diff_mean:.4f}",
                    f"{d.ci_low:.4f}",
                    f"{d.ci_high:.4f}",
                    d.pairs,
                    d.wins,
                ]
            )


def write_summary_with_diffs(rows: Sequence[SummaryRow], results: Sequence[RunResult], path: Path) -> None:
    """The summary CSV plus the paired AUC difference to Uniform at the same keep ratio
    (``diff_vs_uniform``, ``diff_ci_low``, ``diff_ci_high``; empty for Uniform itself). Full
    keeps every frame, so it has no keep of its own: its cells compare it with Uniform when
    Uniform ran at one keep only, and are empty otherwise (the paired table has Full - Uniform
    at every keep)."""
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "dataset",
                "method",
                "keep",
                "auc_mean",
                "auc_std",
                "acc_mean",
                "acc_std",
                "runs",
                "diff_vs_uniform",
                "diff_ci_low",
                "diff_ci_high",
            ]
        )
        for r in rows:
            d = None
            keeps = sorted({x.keep for x in results if x.method == "uniform"})
            if r.method == "full" and len(keeps) == 1:
                d = paired_diff(results, "full", "uniform", keeps[0])
            elif r.method not in ("uniform", "full"):
                d = paired_diff(results, r.method, "uniform", r.keep)
            cells = ["", "", ""] if d is None else [f"{d.diff_mean:.4f}", f"{d.ci_low:.4f}", f"{d.ci_high:.4f}"]
            w.writerow(
                [
                    r.dataset,
                    r.method,
                    f"{r.keep:g}",
                    f"{r.auc_mean:.4f}",
                    f"{r.auc_std:.4f}",
                    f"{r.acc_mean:.4f}",
                    f"{r.acc_std:.4f}",
                    r.runs,
                    *cells,
                ]
            )


def paired_markdown(diffs: Sequence[PairedDiff]) -> str:
    """One line per comparison: mean paired difference [95 % CI], wins / pairs."""
    lines = [
        "| Dataset | keep | comparison | metric | mean difference [95% CI] | wins / pairs |",
        "|---|---|---|---|---|---|",
    ]
    for d in diffs:
        fmt = "{:+.3f}" if d.metric == "auc" else "{:+.1f}"
        ci = "" if math.isnan(d.ci_low) else f" [{fmt.format(d.ci_low)}, {fmt.format(d.ci_high)}]"
        lines.append(
            f"| {d.dataset} | {keep_label(d.keep)} | {METHOD_LABELS[d.method]} - {METHOD_LABELS[d.baseline]} | "
            f"{'AUC' if d.metric == 'auc' else 'bal. acc. (pts)'} | {fmt.format(d.diff_mean)}{ci} | {d.wins} / {d.pairs} |"
        )
    return "\n".join(lines) + "\n"
