"""Which samples a model was trained, validated and tested on: the split rules and the record of
them that the model file keeps.

Splits. ``train`` (and ``compare`` without folds) split by video, stratified by class
(:func:`stratified_split`, in :mod:`.datasets`), or, when ``data.group_column`` or
``data.group_regex`` names each video's patient, by group (:func:`grouped_split`): no group is
ever in two of train, validation and test. ``compare --folds K`` cuts K folds
(:func:`fold_splits`): fold ``f`` tests on one k-th of the samples; its validation set (early
stopping, the kept weights) is carved out of the remaining training folds, never out of the test
fold, and with groups no group lands in two of a fold's train, validation and test. Splits use
scikit-learn's ``StratifiedGroupKFold`` with a fixed seed, so the same seed gives the same folds
on any machine. The grouped fixed split is fold 0 of ``round(1 / test fraction)`` folds.

Groups come from ``data.group_column`` (a column of the CSV index) or ``data.group_regex``, a
regular expression searched in each sample's path: its first capture group (or the whole match)
names the group; a path it does not match is a group of its own.

Records. Every model file stores its split (``meta["split"]``, :func:`split_record`): for each
of train, val and test the samples' names (the CSV paths of videos, ``split/index`` of volumes
and generated clips), a content hash (sha256 of the video file, or of the clip's frames) and the
group. ``evaluate`` and ``compare`` use that record instead of splitting again
(:func:`parts_from_record`), and count how many videos of other data the model has seen
(:func:`overlap`).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
            try:
                train_i, val_i = next(inner.split(np.zeros(len(rest)), labels[rest], group_codes[rest]))
            except ValueError as exc:  # scikit-learn: a class with fewer samples than inner folds
                raise DataError(
                    f"fold {f}: cannot carve a validation set out of {len(rest)} samples ({exc}); use fewer folds, "
                    "a larger data.split validation fraction, or more data"
                ) from None
        out.append((np.sort(rest[train_i]), np.sort(rest[val_i]), np.sort(test)))
    return out


BY_VIDEO_NOTE = (
    "note: the split is by video, not by patient (data.group_column and data.group_regex are unset), so videos "
    "of one patient can be in both train and test; to keep each patient in one split set data.group_column to a "
    "CSV column holding the patient id, or data.group_regex to a regex whose first group finds it in the path"
)


def grouped_split(
    labels: np.ndarray, groups: np.ndarray, *, fractions: Sequence[float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/val/test indices with every group in one part: fold 0 of ``round(1 / test
    fraction)`` group-stratified folds, its validation part carved out as :func:`fold_splits` does.

    Raises:
        DataError: fewer groups than that, or a class missing from a part (too few groups of it).
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    folds = max(2, round(1 / fractions[2]))
    n_groups = len(np.unique(groups))
    if n_groups < folds:
        raise DataError(
            f"data.split's test fraction {fractions[2]:g} needs at least {folds} groups of videos, but the groups "
            f"give {n_groups}; add patients, raise the test fraction or drop data.group_column/group_regex"
        )
    parts = fold_splits(labels, folds=folds, seed=seed, groups=groups, val_fraction=fractions[1] / sum(fractions[:2]))[
        0
    ]
    for name, part in zip(("train", "val", "test"), parts):
        missing = sorted(set(np.unique(labels).tolist()) - set(labels[part].tolist()))
        if missing:
            raise DataError(
                f"the split by group leaves class {missing[0]} out of {name} (its videos come from too few groups); "
                "add patients of that class, try another data.split_seed, or leave the class out with data.classes"
            )
    check_apart(groups, parts)
    return parts


def check_apart(
    groups: Sequence[Any] | np.ndarray, parts: Sequence[np.ndarray], names: Sequence[str] = ("train", "val", "test")
) -> None:
    """Raise DataError when a group (patient) has samples in two parts."""
    seen: dict[Any, str] = {}
    for name, part in zip(names, parts):
        for g in {groups[i] for i in part}:
            if g is None:
                continue
            if g in seen and seen[g] != name:
                raise DataError(f"group {g!r} is in both {seen[g]} and {name}; a patient must stay in one split")
            seen[g] = name


# --- records ---------------------------------------------------------------------------------

_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits), remembered per path, size and mtime."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()[:16]
    return _DIGESTS[key]


def array_digest(array: np.ndarray) -> str:
    """sha256 of an array's bytes (first 16 hex digits): the content of a volume or clip."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


Sample = tuple[str, str, "str | None"]  # name, content hash, group (None: no groups)


def split_record(by: str, parts: Mapping[str, Sequence[Sample]], *, root: str | None = None) -> dict[str, Any]:
    """The plain dict a model file keeps: ``by`` (``video`` or the group setting), the folder
    the names are relative to, and ``[name, hash, group]`` per sample of each split."""
    return {"by": by, "root": root, **{split: [list(s) for s in parts[split]] for split in ("train", "val", "test")}}


def record_samples(record: Mapping[str, Any], split: str) -> list[Sample]:
    return [(str(n), str(d), g) for n, d, g in record.get(split) or []]


def parts_from_record(
    record: Mapping[str, Any], names: Sequence[str], digests: Sequence[str], *, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The recorded split as indices into ``names`` (the samples now at hand).

    Raises:
        DataError: a recorded sample is missing from ``names`` or its content changed.
    """
    index = {n: i for i, n in enumerate(names)}
    parts = []
    for split in ("train", "val", "test"):
        samples = record_samples(record, split)
        missing = [n for n, _, _ in samples if n not in index]
        if missing:
            raise DataError(
                f"the model's recorded {split} split names {len(missing)} sample(s) that {where} does not hold "
                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); use the data it was trained on, "
                "or score other data with --data"
            )
        changed = [n for n, d, _ in samples if digests[index[n]] != d]
        if changed:
            raise DataError(
                f"{len(changed)} of the model's {split} samples changed content since training "
                f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''} in {where}); "
                "restore them, or score the new files with --data"
            )
        parts.append(np.array(sorted(index[n] for n, _, _ in samples), dtype=np.int64))
    return parts[0], parts[1], parts[2]


def record_matches(record: Mapping[str, Any], parts: Mapping[str, Sequence[Sample]]) -> list[str]:
    """The splits whose (name, hash) lists differ between ``record`` and ``parts`` (empty: equal)."""
    return [
        split
        for split in ("train", "val", "test")
        if sorted((n, d) for n, d, _ in record_samples(record, split)) != sorted((n, d) for n, d, _ in parts[split])
    ]


def overlap(record: Mapping[str, Any], samples: Sequence[Sample]) -> dict[str, list[str]]:
    """Which of ``samples`` the model has seen: ``train`` / ``val`` (the same content, whatever
    the name) and ``group`` (another video of a patient it trained or validated on)."""
    seen = {split: {d for _, d, _ in record_samples(record, split)} for split in ("train", "val")}
    groups = {g for split in ("train", "val") for _, _, g in record_samples(record, split) if g is not None}
    out: dict[str, list[str]] = {"train": [], "val": [], "group": []}
    for name, digest, group in samples:
        if digest in seen["train"]:
            out["train"].append(name)
        elif digest in seen["val"]:
            out["val"].append(name)
        elif group is not None and group in groups:
            out["group"].append(name)
    return out


def regroup(record: Mapping[str, Any], groups_of: Any) -> dict[str, Any]:
    """``record`` with the groups ``groups_of(names)`` gives (a group setting applied to a split
    recorded by video)."""
    out = dict(record)
    for split in ("train", "val", "test"):
        samples = record_samples(record, split)
        groups = groups_of([n for n, _, _ in samples])
        out[split] = [[n, d, g] for (n, d, _), g in zip(samples, groups)]
    return out
