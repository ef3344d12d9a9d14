"""Windows of frames as datasets: the clips of a split, and whole videos cut into the windows the
runtime cuts (:mod:`core.windows`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from core.errors import DataError
from core.windows import window_bounds

SPLITS = ("train", "val", "test")


class Clips(Protocol):
    """A split's clips as training and evaluation read them: a map-style dataset of
    ``(x, valid, label)`` items, or ``(x, emb, valid, label)`` for windows that carry their frames'
    embeddings. :class:`ClipSet` is one; so are the random windows of whole videos
    (``video_eval.RandomWindowSet``) and the embedded windows of ``protocol.frozen``."""

    @property
    def x(self) -> np.ndarray: ...
    @property
    def valid(self) -> np.ndarray: ...
    @property
    def labels(self) -> np.ndarray: ...
    @property
    def names(self) -> tuple[str, ...]: ...
    @property
    def num_frames(self) -> int: ...
    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> tuple[Any, ...]: ...


@dataclass(frozen=True, eq=False)
class ClipSet:
    """The clips of one split; a map-style dataset for ``torch.utils.data.DataLoader``.

    Attributes:
        x: (N, T, H, W) uint8 frames.
        valid: (N, T) bool, False for padding.
        labels: (N,) int64 class indices.
        names: a name per clip (the video path, or ``split/index`` for volumes).
    """

    x: np.ndarray
    valid: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return torch.from_numpy(self.x[i][:, None]), torch.from_numpy(self.valid[i]), int(self.labels[i])

    @property
    def num_frames(self) -> int:
        return int(self.x.shape[1])

    def subset(self, index: np.ndarray) -> ClipSet:
        return ClipSet(self.x[index], self.valid[index], self.labels[index], tuple(self.names[i] for i in index))


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """Train, validation and test clips of one dataset with its class names (label order)."""

    train: Clips
    val: Clips
    test: Clips
    class_names: tuple[str, ...]
    notes: tuple[str, ...] = ()  # what loading left out or changed, for the training log
    split_record: dict | None = None  # which samples are in which split (training.split), stored in the model

    def split(self, name: str) -> Clips:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def num_frames(self) -> int:
        return self.train.num_frames


def cut_windows(frames: np.ndarray, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) frames -> (W, T, H, W) windows and (W, T) validity (False for padding)."""
    bounds = window_bounds(len(frames), window, stride)
    x = np.zeros((len(bounds), window, *frames.shape[1:]), dtype=frames.dtype)
    valid = np.zeros((len(bounds), window), dtype=bool)
    for i, (a, b) in enumerate(bounds):
        x[i, : b - a] = frames[a:b]
        valid[i, : b - a] = True
    return x, valid


def windows_of_videos(
    videos: Sequence[np.ndarray], labels: np.ndarray, names: Sequence[str], window: int, stride: int
) -> tuple[ClipSet, np.ndarray]:
    """Every runtime window of every video as one :class:`ClipSet`, and each window's video index."""
    xs, vs, owner = [], [], []
    for i, frames in enumerate(videos):
        x, v = cut_windows(frames, window, stride)
        xs.append(x)
        vs.append(v)
        owner += [i] * len(x)
    owner_arr = np.array(owner, dtype=np.int64)
    clip_names = tuple(f"{names[i]}#{j}" for i, j in zip(owner_arr, _ranks(owner_arr)))
    return ClipSet(np.concatenate(xs), np.concatenate(vs), np.asarray(labels)[owner_arr], clip_names), owner_arr


def _ranks(owner: np.ndarray) -> list[int]:
    seen: dict[int, int] = {}
    out = []
    for o in owner.tolist():
        out.append(seen.get(o, 0))
        seen[o] = out[-1] + 1
    return out
