"""Classification metrics (scikit-learn) and their aggregation over seeds."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score


@dataclass(frozen=True)
class Scores:
    """Scores of one model on one split.

    Attributes:
        auc: ROC AUC; binary: of the positive class' probability; more classes: macro
            one-vs-rest. NaN when the split holds a single class.
        acc: balanced accuracy of the arg-max prediction, in percent.
    """

    auc: float
    acc: float


def classification_scores(labels: np.ndarray, probs: np.ndarray) -> Scores:
    """Score class probabilities against integer labels.

    Args:
        labels: (N,) ints in [0, C).
        probs: (N, C) class probabilities (rows sum to 1).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    with warnings.catch_warnings():  # one class only (scored data may hold one): no AUC, said below
        warnings.simplefilter("ignore", UserWarning)
        acc = 100.0 * balanced_accuracy_score(labels, probs.argmax(axis=1))
    if len(np.unique(labels)) < 2:
        return Scores(auc=math.nan, acc=float(acc))
    if probs.shape[1] == 2:
        auc = roc_auc_score(labels, probs[:, 1])
    else:
        # Macro one-vs-rest, as roc_auc_score(multi_class="ovr") computes it, over the classes
        # present in this split (an absent class has no curve).
        auc = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in np.unique(labels)])
    return Scores(auc=float(auc), acc=float(acc))


def unique_per_window(indices: np.ndarray) -> float:
    """Mean number of distinct positions among the k picks of each window ((N, k) ints)."""
    indices = np.asarray(indices)
    if indices.size == 0:
        return 0.0
    ordered = np.sort(indices, axis=1)
    return float((1 + (np.diff(ordered, axis=1) != 0).sum(axis=1)).mean())


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
