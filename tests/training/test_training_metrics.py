"""Metrics against values computed by hand, and their aggregation into the summary."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from training.metrics import Scores, classification_scores, mean_std, unique_per_window
from training.report import SUMMARY_COLUMNS, RunResult, markdown_table, summarize, write_summary_csv


def test_binary_auc_and_balanced_accuracy_by_hand():
    labels = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    # Pairs (positive, negative): 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> 3/4.
    # Predictions (p1 > 0.5): 0 0 0 1 -> recall of class 0 = 2/2, of class 1 = 1/2 -> 75 %.
    scores = classification_scores(labels, np.stack([1 - p1, p1], axis=1))
    assert scores == Scores(auc=pytest.approx(0.75), acc=pytest.approx(75.0))


def test_multiclass_auc_is_macro_one_vs_rest_by_hand():
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.2, 0.5, 0.3],
            [0.1, 0.6, 0.3],
            [0.5, 0.3, 0.2],
            [0.6, 0.3, 0.1],
            [0.2, 0.2, 0.6],
        ]
    )
    # Class 0: positives 0.7, 0.5 vs negatives 0.2, 0.1, 0.6, 0.2 -> 0.7 beats 4, 0.5 beats 3 -> 7/8.
    # Class 1: positives 0.5, 0.3 vs negatives 0.2, 0.6, 0.3, 0.2 -> 0.5: 3; 0.3: 2 + tie 0.5 -> 5.5/8.
    # Class 2: positives 0.3, 0.6 vs negatives 0.1, 0.3, 0.2, 0.1 -> 0.3: 3 + tie 0.5; 0.6: 4 -> 7.5/8.
    # Predictions: 0 1 1 0 0 2 -> recalls 2/2, 1/2, 1/2 -> 66.67 %.
    scores = classification_scores(labels, probs)
    assert scores.auc == pytest.approx((7 / 8 + 5.5 / 8 + 7.5 / 8) / 3)
    assert scores.acc == pytest.approx(200 / 3)


def test_auc_is_nan_when_a_split_holds_one_class():
    scores = classification_scores(np.array([1, 1]), np.array([[0.3, 0.7], [0.6, 0.4]]))
    assert math.isnan(scores.auc)
    assert scores.acc == pytest.approx(50.0)


def test_unique_frames_and_mean_std():
    assert unique_per_window(np.array([[0, 1, 1], [2, 2, 2], [3, 1, 0]])) == pytest.approx((2 + 1 + 3) / 3)
    assert mean_std([0.6, 0.7, 0.8]) == (pytest.approx(0.7), pytest.approx(0.1))
    assert mean_std([0.5]) == (0.5, 0.0)


def _result(method: str, seed: int, auc: float, acc: float, keep: float = 0.5) -> RunResult:
    return RunResult(
        dataset="toy",
        method=method,
        keep=keep,
        seed=seed,
        k=4,
        num_frames=8,
        val=Scores(0.5, 50.0),
        test=Scores(auc, acc),
        val_loss=0.69,
        best_epoch=1,
        epochs_run=1,
        unique_frames=4.0,
        train_seconds=60.0,
        device="cpu",
    )


def test_summary_groups_by_method_and_keep_in_paper_order(tmp_path):
    results = [
        _result("das", 0, 0.60, 70.0),
        _result("das", 1, 0.70, 80.0),
        _result("full", 0, 0.80, 75.0, keep=1.0),
        _result("das", 0, 0.55, 60.0, keep=0.25),
    ]
    rows = summarize(results)
    assert [(r.method, r.keep, r.runs) for r in rows] == [("full", 1.0, 1), ("das", 0.25, 1), ("das", 0.5, 2)]
    das = rows[2]
    assert (das.auc_mean, das.acc_mean) == (pytest.approx(0.65), pytest.approx(75.0))
    assert das.auc_std == pytest.approx(np.std([0.6, 0.7], ddof=1))

    write_summary_csv(rows, tmp_path / "toy.csv")
    with (tmp_path / "toy.csv").open() as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == SUMMARY_COLUMNS
    assert table[2] == {
        "dataset": "toy",
        "method": "das",
        "keep": "0.5",
        "auc_mean": "0.6500",
        "auc_std": f"{np.std([0.6, 0.7], ddof=1):.4f}",
        "acc_mean": "75.0000",
        "acc_std": "7.0711",
    }

    md = markdown_table(rows)
    # One seed: the mean alone (no "± 0.000"); n shown in every cell (issue 15).
    assert "| toy | 50% | 0.800 / 75.0 (n=1) | 0.650 ± 0.071 / 75.0 ± 7.1 (n=2) |" in md
    assert "| toy | 25% | 0.800 / 75.0 (n=1) | 0.550 / 60.0 (n=1) |" in md
    assert "Full keeps every frame" in md
    assert "Full (every frame) was not run" in markdown_table([r for r in rows if r.method != "full"])
