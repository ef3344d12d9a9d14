"""Run folders that are not silently overwritten, and epoch checkpoints to resume an interrupted ``train``.

``checkpoint.pt`` in the run folder is written after every epoch: the current weights, the
optimizer, every random generator (python, numpy, torch, the data order), the history and the best
weights so far. ``train --resume`` loads it and continues with the next epoch; on the CPU the
result equals an uninterrupted run. It is removed when training ends.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import DataError, ModelFileError

CHECKPOINT_FILE = "checkpoint.pt"

# What a previous train/evaluate wrote into a run folder (removed by --overwrite).
OUTPUTS = (
    "model.pt",
    "config.yaml",
    "train.log",
    "history.csv",
    "result.json",
    CHECKPOINT_FILE,
    "selection-*.png",
    "eval-*.json",
    "videos-*.json",
    "predictions-*.csv",
    "confusion-*.json",
    "confusion-*.png",
)


def prepare_run_dir(run_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse a non-empty folder unless ``overwrite`` (then remove the old outputs) or ``resume``."""
    if resume:
        if not (run_dir / CHECKPOINT_FILE).is_file():
            raise DataError(
                f"--resume: no {CHECKPOINT_FILE} in {run_dir}; a run that finished leaves none (start a new one with "
                "--out NEW or --overwrite)"
            )
        return
    clear_outputs(
        run_dir,
        OUTPUTS,
        overwrite=overwrite,
        refusal="run folder {folder} is not empty (it holds {held}...); pass --overwrite to replace that run, "
        "--resume to continue it, or --out NEW",
    )


def clear_outputs(folder: Path, patterns: tuple[str, ...], *, overwrite: bool, refusal: str) -> None:
    """A non-empty ``folder`` is refused (DataError ``refusal``, formatted with ``folder`` and
    ``held``, the first few names in it) unless ``overwrite``; then the files matching
    ``patterns`` are removed, and nothing else."""
    if not (folder.is_dir() and any(folder.iterdir())):
        return
    if not overwrite:
        held = ", ".join(sorted(p.name for p in folder.iterdir())[:4])
        raise DataError(refusal.format(folder=folder, held=held))
    for pattern in patterns:
        for old in folder.glob(pattern):
            if old.is_file():
                old.unlink()


def resume_conflict(run_dir: Path, requested: dict[str, Any], resolved: dict[str, Any]) -> list[str]:
    """The keys in which ``config.yaml`` of ``run_dir`` differs from this run's config (empty:
    the same run; ``train.epochs`` may differ). The file may hold the resolved config or, written
    before configs were resolved, the requested one."""
    import yaml

    try:
        before = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []

    def without_epochs(config: dict[str, Any]) -> dict[str, Any]:
        return {**config, "train": {**(config.get("train") or {}), "epochs": None}}

    before = without_epochs(before)
    candidates = [without_epochs(resolved), without_epochs(requested)]
    if before in candidates:
        return []
    now = candidates[0]
    return sorted(
        f"{s}.{k}"
        for s in set(now) | set(before)
        if isinstance(now.get(s), dict)
        for k in set(now[s]) | set(before.get(s) or {})
        if now[s].get(k) != (before.get(s) or {}).get(k)
    ) or ["name"]


def rng_state(order: torch.Generator) -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "order": order.get_state(),
    }


def set_rng_state(state: dict[str, Any], order: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    order.set_state(state["order"])


def save_checkpoint(path: Path, **state: Any) -> None:
    """Write atomically (an interruption while writing keeps the previous checkpoint)."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        # Our own file in the run folder; it holds RNG states (tuples, numpy arrays), not only tensors.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelFileError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); start again with --overwrite"
        ) from None
