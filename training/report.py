"""Run results, the per-dataset summary (CSV, markdown table, AUC figure) and the selection figure.

Figures use matplotlib's object API (no pyplot), so nothing here touches global GUI state.
"""

from __future__ import annotations

import csv
import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from core.errors import DataError
from sampler.model import SAMPLERS

from .config import METHODS
from .metrics import Scores, mean_std

SUMMARY_COLUMNS = ("dataset", "method", "keep", "auc_mean", "auc_std", "acc_mean", "acc_std")
METHOD_LABELS = {name: cls.label for name, cls in SAMPLERS.items()}  # "das" -> "DAS", in table order


@dataclass(frozen=True)
class RunResult:
    """What one training run produced (``result.json`` in its folder).

    Attributes:
        dataset, method, keep, seed: what was run; keep is 1.0 for ``full``.
        k, num_frames: frames kept per window and window length T.
        val, test: scores of the best-validation weights.
        val_loss: the best validation loss (the early-stopping criterion).
        best_epoch, epochs_run: 1-based epoch of the kept weights, epochs actually trained.
        unique_frames: mean distinct frames picked per test window.
        train_seconds: wall-clock time of training (all epochs, validation included).
        device: where it ran.
    """

    dataset: str
    method: str
    keep: float
    seed: int
    k: int
    num_frames: int
    val: Scores
    test: Scores
    val_loss: float
    best_epoch: int
    epochs_run: int
    unique_frames: float
    train_seconds: float
    device: str
    fold: int = -1
    window_test: Scores | None = None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunResult:
        try:
            raw: dict[str, Any] = json.loads(Path(path).read_text())
            raw["val"], raw["test"] = Scores(**raw["val"]), Scores(**raw["test"])
            if raw.get("window_test") is not None:
                raw["window_test"] = Scores(**raw["window_test"])
            return cls(**raw)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise DataError(f"result file {path} is unreadable ({exc}); delete it so the run is redone") from None


@dataclass(frozen=True)
class SummaryRow:
    """Mean and sample standard deviation over seeds for one method and keep ratio."""

    dataset: str
    method: str
    keep: float
    auc_mean: float
    auc_std: float
    acc_mean: float
    acc_std: float
    runs: int
    train_seconds: float


def summarize(results: Sequence[RunResult]) -> list[SummaryRow]:
    """Group runs by (dataset, method, keep), in the paper's method order."""
    groups: dict[tuple[str, str, float], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.dataset, r.method, r.keep), []).append(r)
    rows = []
    for (dataset, method, keep), runs in groups.items():
        auc_mean, auc_std = mean_std([r.test.auc for r in runs])
        acc_mean, acc_std = mean_std([r.test.acc for r in runs])
        seconds = sum(r.train_seconds for r in runs)
        rows.append(SummaryRow(dataset, method, keep, auc_mean, auc_std, acc_mean, acc_std, len(runs), seconds))
    return sorted(rows, key=lambda r: (r.dataset, METHODS.index(r.method), r.keep))


def write_summary_csv(rows: Sequence[SummaryRow], path: Path) -> None:
    """The per-dataset summary: ``dataset, method, keep, auc_mean, auc_std, acc_mean, acc_std``."""
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SUMMARY_COLUMNS)
        for r in rows:
            writer.writerow(
                [r.dataset, r.method, f"{r.keep:g}", *(f"{getattr(r, c):.4f}" for c in SUMMARY_COLUMNS[3:])]
            )


def keep_label(keep: float) -> str:
    """A keep ratio as a percentage with the digits it needs: ``12.5%``, ``50%``."""
    return f"{keep * 100:g}%"


def markdown_table(rows: Sequence[SummaryRow], *, over: str = "seeds") -> str:
    """Table 1 layout (a row per dataset and keep ratio, AUC / balanced accuracy per method),
    then one line per method with its number of runs and training time; ``over`` says what the
    runs of one cell are (``seeds``, or ``folds x seeds``)."""
    methods = [m for m in METHODS if any(r.method == m for r in rows)]
    full = {r.dataset: r for r in rows if r.method == "full"}
    keeps = sorted({r.keep for r in rows if r.method != "full"}) or [1.0]
    lines = [
        "| Dataset | keep | " + " | ".join(METHOD_LABELS[m] for m in methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for dataset in sorted({r.dataset for r in rows}):
        for keep in keeps:
            cells = []
            for m in methods:
                match = full.get(dataset) if m == "full" else _find(rows, dataset, m, keep)
                cells.append(_cell(match) if match else "-")
            lines.append(f"| {dataset} | {keep_label(keep)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Cells: test ROC AUC / balanced accuracy (%), mean ± sample std over the n runs ({over}; no ± with one run)."
        + (" Full keeps every frame." if "full" in methods else " Full (every frame) was not run."),
        "",
        f"| Dataset | Method | keep | AUC | Balanced acc. (%) | runs ({over}) | training time (total) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.dataset} | {METHOD_LABELS[r.method]} | {keep_label(r.keep)} | {_pm(r.auc_mean, r.auc_std, r.runs, 3)} | "
            f"{_pm(r.acc_mean, r.acc_std, r.runs, 1)} | {r.runs} | {_duration(r.train_seconds)} |"
        )
    return "\n".join(lines) + "\n"


def _find(rows: Sequence[SummaryRow], dataset: str, method: str, keep: float) -> SummaryRow | None:
    return next((r for r in rows if r.dataset == dataset and r.method == method and math.isclose(r.keep, keep)), None)


def _cell(r: SummaryRow) -> str:
    return f"{_pm(r.auc_mean, r.auc_std, r.runs, 3)} / {_pm(r.acc_mean, r.acc_std, r.runs, 1)} (n={r.runs})"


def _pm(mean: float, std: float, runs: int, digits: int) -> str:
    """``mean ± std``, or the mean alone for one run (a std of one value says nothing)."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if runs > 1 else f"{mean:.{digits}f}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def plot_auc(rows: Sequence[SummaryRow], path: Path, *, title: str) -> None:
    """Bar chart of test AUC per method (error bars: std over seeds, none for one seed; each bar
    labelled with its mean and n), one bar group per keep ratio; the y axis starts at 0."""
    methods = [m for m in METHODS if any(r.method == m for r in rows)]
    keeps = sorted({r.keep for r in rows if r.method != "full"}) or [1.0]
    fig = Figure(figsize=(1.3 * len(methods) + 2, 3.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(keeps)
    for j, keep in enumerate(keeps):
        xs, means, stds, colors, ns = [], [], [], [], []
        for i, m in enumerate(methods):
            if m == "full":  # one bar: Full keeps every frame whatever the keep ratio
                r = next((r for r in rows if r.method == m), None) if j == 0 else None
                offset = 0.0
            else:
                r = _find(rows, rows[0].dataset, m, keep)
                offset = (j - (len(keeps) - 1) / 2) * width
            if r is not None:
                xs.append(i + offset)
                means.append(r.auc_mean)
                stds.append(r.auc_std if r.runs > 1 else math.nan)  # no error bar from one seed
                colors.append("0.55" if m == "full" else f"C{j}")
                ns.append(r.runs)
        ax.bar(xs, means, width=width * 0.95, yerr=stds, capsize=3, color=colors)
        for x, mean, std, n in zip(xs, means, stds, ns):
            ax.text(
                x,
                min(mean + (0.0 if math.isnan(std) else std), 1.0) + 0.01,
                f"{mean:.2f}\nn={n}",
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(range(len(methods)), [METHOD_LABELS[m] for m in methods])
    ax.set_ylabel("test ROC AUC")
    chance = ax.axhline(0.5, color="gray", lw=0.8, ls="--", label="chance (AUC 0.5)")
    ax.set_ylim(0.0, 1.12)  # from 0: bar heights compare honestly; room for the labels above 1
    ax.set_title(_wrap(title, 1.3 * len(methods) + 2, 10), fontsize=10)
    handles: list[Artist] = [Patch(color=f"C{j}", label=f"keep {keep_label(keep)}") for j, keep in enumerate(keeps)]
    handles = [*(handles if len(keeps) > 1 else []), chance]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars
    fig.savefig(path, dpi=120)


THUMBS_PER_ROW = 16  # thumbnails per row in the selection figure (T = 64: 4 rows)


def _wrap(text: str, width_in: float, points: float = 9) -> str:
    """``text`` wrapped to fit a figure ``width_in`` inches wide at ``points`` size."""
    return "\n".join(textwrap.wrap(text, max(30, int(width_in * 72 / (0.55 * points)))))


def plot_selection(
    *,
    indices: np.ndarray,
    valid: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    clips: np.ndarray,
    path: Path,
    title: str,
    samples_per_class: int = 1,
    names: Sequence[str] | None = None,
) -> None:
    """Which positions the sampler picks across a split, and the picks for a few clips.

    Padding is marked: a heat-map row gives the share of clips padded at each position, and
    padded frames in the example strips are crossed out in red (a pick there is a pick of
    nothing). Each example strip is titled with its clip's name.

    Args:
        indices: (N, k) picked positions per clip.
        valid: (N, T) validity masks.
        labels: (N,) class indices.
        class_names: label names.
        clips: (N, T, H, W) uint8 frames (only the shown samples are read).
        path: PNG to write.
        title: figure title.
        samples_per_class: clips shown per class (the first of each class).
        names: a name per clip (e.g. the video path), shown above its strip.
    """
    n, t = valid.shape
    picked = np.zeros((n, t), dtype=bool)
    np.put_along_axis(picked, indices, True, axis=1)
    rows = [("all", np.ones(n, dtype=bool))] + [(name, labels == c) for c, name in enumerate(class_names)]
    rows = [(name, mask) for name, mask in rows if mask.any()]
    heat = np.stack([picked[mask].mean(axis=0) for _, mask in rows])
    padding = (~valid).mean(axis=0)
    labels_y = [f"{name} (n={mask.sum()})" for name, mask in rows]
    if padding.any():
        heat = np.vstack([heat, padding[None]])
        labels_y.append("padding (share of clips)")
    shown = [i for c in range(len(class_names)) for i in np.flatnonzero(labels == c)[:samples_per_class]]

    per_row = min(t, THUMBS_PER_ROW)  # long windows wrap into rows of thumbnails
    rows_per_clip = -(-t // per_row)
    frame_in = min(0.6, 10.0 / per_row)  # inches per thumbnail
    width = max(6.0, frame_in * per_row + 1.5)
    strip_h = frame_in * rows_per_clip + 0.35
    fig = Figure(figsize=(width, 1.2 + 0.35 * len(heat) + strip_h * len(shown)), layout="constrained")
    grid = fig.add_gridspec(1 + len(shown), 1, height_ratios=[0.35 * len(heat) + 0.6] + [strip_h] * len(shown))
    ax = fig.add_subplot(grid[0])
    im = ax.imshow(heat, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(heat)), labels_y)
    if padding.any():
        ax.axhline(len(heat) - 1.5, color="red", lw=1.0)
    ax.set_xlabel("frame / slice position")
    ax.set_title(_wrap(f"{title}: fraction of windows picking each position", width), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.02)
    for row, i in enumerate(shown, start=1):
        frames = clips[i].astype(np.float32) / 255.0
        strip = np.where(picked[i][:, None, None], frames, frames * 0.25)
        strip[~valid[i]] = 0.0
        h, w = frames.shape[1:]
        sheet = np.ones((rows_per_clip * h, per_row * w), np.float32)  # white where no frame is
        for pos in range(t):
            r, c = divmod(pos, per_row)
            sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = strip[pos]
        ax = fig.add_subplot(grid[row])
        ax.imshow(sheet, cmap="gray", vmin=0, vmax=1, aspect="equal")
        for p in np.flatnonzero(picked[i]):
            r, c = divmod(int(p), per_row)
            ax.add_patch(Rectangle((c * w - 0.5, r * h - 0.5), w, h, fill=False, edgecolor="orange", linewidth=1.0))
        for p in np.flatnonzero(~valid[i]):  # padding: crossed out
            r, c = divmod(int(p), per_row)
            x0, x1, y0, y1 = c * w - 0.5, (c + 1) * w - 0.5, r * h - 0.5, (r + 1) * h - 0.5
            ax.plot([x0, x1], [y0, y1], color="red", lw=0.6)
            ax.plot([x0, x1], [y1, y0], color="red", lw=0.6)
        ax.set_axis_off()
        name = f"{names[i]} " if names is not None else ""
        pad = f", {int((~valid[i]).sum())} of {t} frames padding (red X)" if not valid[i].all() else ""
        wrap = f"; rows of {per_row} frames" if rows_per_clip > 1 else ""
        ax.set_title(
            _wrap(
                f"{name}[{class_names[labels[i]]}]: picked (bright, boxed) {sorted(set(indices[i].tolist()))}{pad}{wrap}",
                width,
            ),
            fontsize=8,
            loc="left",
        )
    fig.savefig(path, dpi=110)
