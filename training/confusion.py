"""Per-class sensitivity and specificity and the confusion matrix ``evaluate`` writes (JSON and PNG)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from sklearn.metrics import confusion_matrix


def per_class(labels: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """The confusion matrix (rows: true class, columns: predicted) and, per class (one vs rest),
    sensitivity = TP / (TP + FN), specificity = TN / (TN + FP) and the clip count (None when a
    ratio has no denominator)."""
    n = len(class_names)
    cm = confusion_matrix(np.asarray(labels), np.asarray(predicted), labels=list(range(n)))
    total = int(cm.sum())
    classes = {}
    for i, name in enumerate(class_names):
        tp = int(cm[i, i])
        fn = int(cm[i].sum()) - tp
        fp = int(cm[:, i].sum()) - tp
        tn = total - tp - fn - fp
        classes[name] = {
            "clips": tp + fn,
            "sensitivity": tp / (tp + fn) if tp + fn else None,
            "specificity": tn / (tn + fp) if tn + fp else None,
        }
    return {
        "classes": list(class_names),
        "matrix": cm.tolist(),
        "rows": "true class",
        "columns": "predicted class",
        "per_class": classes,
    }


def write_confusion(result: dict[str, Any], json_path: Path, png_path: Path, *, title: str) -> None:
    """The JSON, and a figure: the matrix with its counts, and a table of each class's clips,
    sensitivity and specificity beside it; the title wrapped to the figure's width."""
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    cm = np.asarray(result["matrix"])
    names = result["classes"]
    n = len(names)
    width = 4.6 + 1.1 * n
    fig = Figure(figsize=(width, 2.4 + 0.8 * n), layout="constrained")
    grid = fig.add_gridspec(1, 2, width_ratios=[1.0 * n, 3.0])
    ax = fig.add_subplot(grid[0])
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, int(cm.max())))
    for i in range(n):
        for j in range(n):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black"
            )
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    table_ax = fig.add_subplot(grid[1])
    table_ax.set_axis_off()
    cells = [
        [c, str(v["clips"]), _pct(v["sensitivity"]), _pct(v["specificity"])]
        for c, v in ((c, result["per_class"][c]) for c in names)
    ]
    rows = len(cells) + 1
    top = 0.5 + 0.06 * rows  # the table centred beside the matrix, its caption just above it
    table = table_ax.table(
        cellText=cells,
        colLabels=["class", "n", "sensitivity", "specificity"],
        cellLoc="center",
        bbox=Bbox.from_bounds(0.0, top - 0.12 * rows, 1.0, 0.12 * rows),
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table_ax.text(0.5, top + 0.03, "per class, one vs rest (n: true samples)", ha="center", va="bottom", fontsize=8)
    full = f"{title} (n={int(cm.sum())})"
    fig.suptitle("\n".join(textwrap.wrap(full, max(30, int(width * 72 / 5.0)))), fontsize=9)
    fig.savefig(png_path, dpi=110)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"
