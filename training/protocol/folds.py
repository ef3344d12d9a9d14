"""Stratified, group-aware k-fold splits for cross-validation (``das-stream compare --folds K``).

Fold ``f`` tests on one k-th of the samples; its validation set (early stopping, the kept
weights) is carved out of the remaining training folds, never out of the test fold. With groups
(patients, or any source of correlated samples) no group ever lands in two of train, validation
and test of one fold. Splits use scikit-learn's ``StratifiedGroupKFold`` with a fixed seed, so
the same seed gives the same folds on any machine.

Groups come from ``data.group_column`` (a column of the CSV index) or ``data.group_regex``, a
regular expression searched in each sample's path: its first capture group (or the whole match)
names the group; a path it does not match is a group of its own.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from core.errors import DataError


def groups_from_regex(names: Sequence[str], pattern: str) -> np.ndarray:
    """One group id per name: the regex's first capture group (or whole match) in the name.

    Names the pattern does not match become their own group (``"<name>"``), so they can never
    join another sample's group by accident.

    Raises:
        DataError: the pattern does not compile.
    """
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"data.group_regex {pattern!r} is not a valid regular expression ({exc}); fix it") from None
    out = []
    for name in names:
        m = rx.search(name)
        if m is None:
            out.append(f"<{name}>")
        else:
            out.append(m.group(1) if rx.groups and m.group(1) is not None else m.group(0))
    return np.array(out, dtype=object)


def fold_splits(
    labels: np.ndarray,
    *,
    folds: int,
    seed: int,
    groups: np.ndarray | None = None,
    val_fraction: float = 0.2,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``folds`` (train, val, test) index triples; the test parts partition the samples.

    Args:
        labels: (N,) class of each sample.
        folds: K >= 2.
        seed: the shuffling seed (same seed, same folds).
        groups: (N,) group of each sample (default: every sample its own group).
        val_fraction: share of each fold's training part that becomes its validation set
            (rounded to one of ``round(1 / val_fraction)`` group-stratified folds; fewer when
            there are fewer groups).

    Raises:
        DataError: fewer groups than folds.
    """
    labels = np.asarray(labels)
    n = len(labels)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if len(groups) != n:
        raise DataError(f"got {len(groups)} group ids for {n} samples; give one group per sample")
    n_groups = len(np.unique(groups))
    if folds < 2 or n_groups < folds:
        raise DataError(f"cannot make {folds} folds from {n_groups} groups; use 2 <= --folds <= {n_groups}")
    _, group_codes = np.unique(groups, return_inverse=True)
    outer = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    inner_k = max(2, round(1 / val_fraction))
    out = []
    for f, (rest, test) in enumerate(outer.split(np.zeros(n), labels, group_codes)):
        rest_groups = len(np.unique(group_codes[rest]))
        if rest_groups < 2:
            raise DataError(f"fold {f}: too few groups left to carve a validation set; use fewer folds")
        inner = StratifiedGroupKFold(n_splits=min(inner_k, rest_groups), shuffle=True, random_state=seed + 1000 + f)
        with warnings.catch_warnings():  # a class rarer than inner_k simply misses some inner folds
            warnings.simplefilter("ignore", UserWarning)
            train_i, val_i = next(inner.split(np.zeros(len(rest)), labels[rest], group_codes[rest]))
        out.append((np.sort(rest[train_i]), np.sort(rest[val_i]), np.sort(test)))
    return out
