"""``das-stream evaluate PACKAGE``: score a model package on one split of its dataset, running it as
the runtime does (ONNX Runtime and numpy, :func:`sampler.package.classify_windows`), so the
figures are those of what a deployment runs. Clip-level scores and a predictions CSV; the figures
of picked frames and the whole-video scores stay with the torch model file's ``evaluate``."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from core.errors import DataError
from sampler.package import PackageModel, classify_windows

from .config import ExperimentConfig
from .datasets import load_dataset
from .metrics import classification_scores, unique_per_window


def evaluate_package(
    path: str | os.PathLike, *, config: ExperimentConfig, split: str = "test", out: str | os.PathLike | None = None
) -> dict:
    """Score the package at ``path`` on ``split`` of ``config``'s data (the split its card records
    when it has one); writes ``eval-<split>-package.json`` and ``predictions-<split>-package.csv``."""
    package = PackageModel(path, device="cpu")
    data = load_dataset(config.data, recorded=(package.card.get("provenance") or {}).get("split"))
    clips = data.split(split)
    if package.num_frames != data.num_frames or package.class_names != data.class_names:
        raise DataError(
            f"package {path} expects T={package.num_frames} and classes {list(package.class_names)}, but the data of "
            f"{config.source} has T={data.num_frames} and classes {list(data.class_names)}; pass the config it was trained with"
        )
    runs = [classify_windows(package, clips.x[i : i + 16], clips.valid[i : i + 16]) for i in range(0, len(clips), 16)]
    picked, p = np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs])
    scores = classification_scores(clips.labels, p)
    loss = float(-np.log(np.clip(p[np.arange(len(p)), clips.labels], 1e-12, 1.0)).mean())
    out = Path(out) if out is not None else Path(path).parent
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"eval-{split}-package.json", out / f"predictions-{split}-package.csv"]
    report = {
        "model": str(path),
        "runtime": "package (ONNX Runtime)",
        "split": split,
        "clips": len(clips),
        "loss": loss,
        "auc": scores.auc,
        "acc": scores.acc,
        "unique_frames": unique_per_window(picked),
        "k": package.k,
        "num_frames": package.num_frames,
        "files": [str(f) for f in files],
    }
    files[0].write_text(json.dumps(report, indent=2) + "\n")
    with open(files[1], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip", "label", "predicted", *(f"p_{c}" for c in data.class_names), "picked"])
        for name, label, row, chosen in zip(clips.names, clips.labels, p, picked):
            names = data.class_names
            writer.writerow(
                [name, names[label], names[int(row.argmax())], *(f"{x:.4f}" for x in row), " ".join(map(str, chosen))]
            )
    return report
