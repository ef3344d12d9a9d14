"""Files written so that an interrupted process never leaves half of one behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_atomic(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez(f, allow_pickle=False, **arrays)
    tmp.replace(path)
