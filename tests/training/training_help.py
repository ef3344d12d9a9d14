"""Small datasets in the real formats, written by the training tests.

- ``write_npz``: a MedMNIST 3D npz (``{train,val,test}_{images,labels}``, uint8 (N, D, H, W),
  labels (N, 1)) where class 1 volumes carry a bright cube on a few slices.
- ``write_video``: a gray clip encoded with PyAV (mpeg4 in mp4), frame i flat at a given level.
- ``write_config``: an experiment YAML.
- ``write_video_index``: a CSV index of 12 small videos of two classes and six patients.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sources.synthetic import encode_video

SPLIT_SIZES = {"train": 16, "val": 8, "test": 8}


def volumes(n: int, *, depth: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n volumes with alternating labels; class 1 has a bright cube on slices 2..4."""
    labels = np.arange(n) % 2
    x = rng.integers(0, 60, (n, depth, size, size)).astype(np.uint8)
    x[labels == 1, 2:5, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 230
    return x, labels[:, None].astype(np.uint8)


def write_npz(path: Path, *, depth: int = 8, size: int = 16, drop: tuple[str, ...] = (), **replace: np.ndarray) -> Path:
    """A tiny MedMNIST 3D npz; ``drop`` leaves keys out, ``replace`` swaps arrays in."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in SPLIT_SIZES.items():
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = volumes(n, depth=depth, size=size, rng=rng)
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if k not in drop})
    return path


def write_video(
    path: Path, levels: list[int], *, fps: int, size: tuple[int, int] = (32, 32), split_halves: bool = False
) -> Path:
    """Encode gray frames (frame i flat at ``levels[i]``) with PyAV; ``split_halves`` makes the
    right half of every frame black."""
    width, height = size

    def image(level: int) -> np.ndarray:
        frame = np.full((height, width), level, np.uint8)
        if split_halves:
            frame[:, width // 2 :] = 0
        return frame

    return encode_video(path, (image(level) for level in levels), fps=fps, codec="mpeg4")


def write_config(path: Path, data: dict[str, Any], **sections: dict[str, Any]) -> Path:
    """An experiment YAML with fast defaults (tiny backbone input, one epoch, no progress bar)."""
    config = {
        "name": "tiny",
        "data": data,
        "model": {"method": "das", "keep": 0.5, "feature_size": 16, "input_size": 32, "backbone_weights": "none"},
        "train": {
            "epochs": 1,
            "patience": 1,
            "batch_size": 8,
            "threads": 1,
            "progress": False,
            "out": str(path.parent / "runs"),
        },
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    path.write_text(yaml.safe_dump(config))
    return path


def write_video_index(tmp_path: Path) -> Path:
    """12 gray videos (10-21 frames, 16 px, 10 fps) of two classes, two per patient
    (``<label>_pat<p>_clip<i>.mp4``, one of each class), and their CSV index ``index.csv``."""
    folder = tmp_path / "videos"
    folder.mkdir()
    rows = []
    for i in range(12):
        label = ["dark", "bright"][i % 2]
        base = 40 if label == "dark" else 180
        name = f"{label}_pat{i // 2}_clip{i}.mp4"  # two videos per patient, one of each class
        write_video(folder / name, [base + (j % 3) * 5 for j in range(10 + i)], fps=10, size=(16, 16))
        rows.append((f"videos/{name}", label))
    index = tmp_path / "index.csv"
    with index.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return index


def compare_argv(
    config: Path, out: Path, methods: str, *, folds: int | None = None, seeds: str = "0", keeps: str = "0.5", sets=()
) -> list[str]:
    """`das-stream compare` arguments for a small grid (one seed and one keep unless told)."""
    argv = ["compare", "--config", str(config), "--methods", methods, "--seeds", seeds, "--keeps", keeps]
    argv += ["--out", str(out)] + (["--folds", str(folds)] if folds else [])
    for setting in sets:
        argv += ["--set", setting]
    return argv
