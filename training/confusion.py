"""Per-class sensitivity and specificity and the confusion matrix ``evaluate`` writes (JSON and PNG)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
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
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    cm = np.asarray(result["matrix"])
    names = result["classes"]
    n = len(names)
    fig = Figure(figsize=(2.2 + 0.9 * n, 1.8 + 0.9 * n), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, int(cm.max())))
    for i in range(n):
        for j in range(n):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black"
            )
    sens = [result["per_class"][c]["sensitivity"] for c in names]
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), [f"{c} (n={result['per_class'][c]['clips']}, sens {_pct(s)})" for c, s in zip(names, sens)])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title} (n={int(cm.sum())} clips)", fontsize=9)
    fig.savefig(png_path, dpi=110)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"
