"""Video-level scores: a video is cut into windows as the streaming runtime cuts them, every
window is classified, and the video's class probabilities are the mean of its windows'.

The cut is :mod:`core.windows`, the rule ``das-stream run`` follows: windows start at frames 0, S, 2S, ... and hold T
frames; at the end of the video one partial window holds the frames no full window reached (its
missing frames are empty and masked out, as the runtime pads them); a video shorter than T is a
single partial window. This is what a user of ``das-stream run`` gets per video, and how
published lung ultrasound results are reported (Born et al., video-level accuracy).

:func:`evaluate_videos` is the reusable entry point (also for ``das-stream evaluate``);
:func:`load_whole_videos` decodes (and caches) the whole videos of a ``data: {kind: videos}`` config.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sampler.model import SampledClassifier

from .clips import cut_windows, windows_of_videos
from .config import DataConfig
from .corruptions import StreamCorruption
from .datasets import VideoEntry, VideoIndex, decode_frames, read_video_index
from .files import write_atomic
from .loop import evaluate
from .metrics import Scores, classification_scores


def aggregate_video_probs(window_probs: np.ndarray, owner: np.ndarray, num_videos: int | None = None) -> np.ndarray:
    """(W, C) window probabilities -> (V, C): the mean over each video's windows."""
    owner = np.asarray(owner)
    v = int(owner.max()) + 1 if num_videos is None else num_videos
    sums = np.zeros((v, window_probs.shape[1]))
    np.add.at(sums, owner, window_probs)
    counts = np.bincount(owner, minlength=v)
    if (counts == 0).any():
        raise ValueError(f"videos {np.flatnonzero(counts == 0).tolist()} have no window")
    return sums / counts[:, None]


@dataclass(frozen=True)
class VideoEvaluation:
    """Video-level and window-level results of one model on a set of videos."""

    scores: Scores
    window_scores: Scores
    probs: np.ndarray
    labels: np.ndarray
    windows_per_video: np.ndarray


def evaluate_videos(
    model: SampledClassifier,
    videos: Sequence[np.ndarray],
    labels: np.ndarray,
    *,
    window: int,
    stride: int,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    names: Sequence[str] | None = None,
) -> VideoEvaluation:
    """Classify every runtime window of every video; a video's prediction is the mean of its
    windows' probabilities.

    Args:
        model: a trained model (its T need not equal ``window``; usually it does).
        videos: (N_i, H, W) uint8 frames per video, at the model's frame rate.
        labels: (V,) class per video.
        window, stride: T and S of the runtime.
    """
    labels = np.asarray(labels, dtype=np.int64)
    names = names if names is not None else [str(i) for i in range(len(videos))]
    clips, owner = windows_of_videos(videos, labels, names, window, stride)
    ev = evaluate(model, clips, device=torch.device(device), batch_size=batch_size)
    probs = aggregate_video_probs(ev.probs, owner, len(videos))
    return VideoEvaluation(
        scores=classification_scores(labels, probs),
        window_scores=ev.scores,
        probs=probs,
        labels=labels,
        windows_per_video=np.bincount(owner, minlength=len(videos)),
    )


class RandomWindowSet(torch.utils.data.Dataset):
    """Training clips: each visit of a video draws one T-frame window from anywhere in it
    (seeded), optionally corrupted. Same interface as :class:`ClipSet` for the training loop.

    With ``embeddings`` (one (N_i, D) array per video, :mod:`.frozen`) an item is
    ``(x, emb, valid, label)``: the window's frames and their embedding rows."""

    def __init__(
        self,
        videos: list[np.ndarray],
        labels: np.ndarray,
        names: tuple[str, ...],
        num_frames: int,
        *,
        seed: int,
        corruption: StreamCorruption | None = None,
        embeddings: list[np.ndarray] | None = None,
    ) -> None:
        if corruption is not None and embeddings is not None:
            raise ValueError("pre-embedded windows cannot be corrupted afresh; embed a corrupted copy instead")
        self.videos, self.labels, self.names = videos, np.asarray(labels), names
        self._t = num_frames
        self.rng = np.random.default_rng([seed, 11])
        self.corruption = corruption
        self.embeddings = embeddings

    @property
    def num_frames(self) -> int:
        return self._t

    @property
    def x(self) -> np.ndarray:
        """(N, T, H, W): each video's first window (what the model card's size and data
        fingerprint read; training draws other windows)."""
        return self._first()[0]

    @property
    def valid(self) -> np.ndarray:
        return self._first()[1]

    def _first(self) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(self, "_first_windows"):
            cuts = [cut_windows(v[: self._t], self._t, self._t) for v in self.videos]
            self._first_windows = (np.stack([c[0][0] for c in cuts]), np.stack([c[1][0] for c in cuts]))
        return self._first_windows

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        frames, t = self.videos[i], self._t
        start = int(self.rng.integers(0, max(0, len(frames) - t) + 1))
        x, valid = cut_windows(frames[start : start + t], t, t)
        x, valid = x[0], valid[0]
        if self.corruption is not None:
            n = int(valid.sum())
            x[:n] = self.corruption(x[:n], self.rng)
        x_t, valid_t, label = (
            torch.from_numpy(np.ascontiguousarray(x)[:, None]),
            torch.from_numpy(valid),
            int(self.labels[i]),
        )
        if self.embeddings is None:
            return x_t, valid_t, label
        emb = cut_windows(self.embeddings[i][start : start + t], t, t)[0][0]
        return x_t, torch.from_numpy(emb), valid_t, label


# --- whole videos --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class VideoSet:
    """Whole videos (variable length, (N_i, H, W) uint8) with labels and names, and the index
    rows they came from (groups, content hashes, notes on rows left out)."""

    videos: list[np.ndarray]
    labels: np.ndarray
    names: tuple[str, ...]
    class_names: tuple[str, ...]
    index: VideoIndex | None = None

    @property
    def groups(self) -> np.ndarray:
        """(V,) group per video; each video its own group without a group setting."""
        entries = self.index.entries if self.index is not None else []
        return np.array([e.group or f"<{e.name}>" for e in entries] or [f"<{n}>" for n in self.names], dtype=object)

    def take(self, index: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, tuple[str, ...]]:
        return [self.videos[i] for i in index], self.labels[index], tuple(self.names[i] for i in index)


def load_whole_videos(config: DataConfig, *, min_videos: int = 3) -> VideoSet:
    """Decode every video of the index whole (cached under ``cache_dir``)."""
    index = read_video_index(config, min_videos=min_videos)
    entries, class_names = index.entries, index.class_names
    key = {
        "version": 2,  # 2: resampled by core.resample (frames repeat only with data.upsample)
        "whole": True,
        "fps": config.fps,
        "upsample": config.upsample,
        "size": config.size,
        "max_frames": config.max_frames,
        "files": [
            [str(e.path.resolve()), e.path.stat().st_size, e.path.stat().st_mtime_ns, e.crop, e.trim] for e in entries
        ],
    }
    cache = (
        Path(config.cache_dir).expanduser()
        / f"whole-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.npz"
    )
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            frames, lengths = npz["frames"], npz["lengths"]
        videos = np.split(frames, np.cumsum(lengths)[:-1])
    else:
        videos = [_decode_whole(e, config) for e in entries]
        write_atomic(cache, frames=np.concatenate(videos), lengths=np.array([len(v) for v in videos]))
    labels = np.array([class_names.index(e.label) for e in entries], dtype=np.int64)
    names = tuple(e.name for e in entries)
    return VideoSet(list(videos), labels, names, class_names, index)


def _decode_whole(entry: VideoEntry, config: DataConfig) -> np.ndarray:
    return np.ascontiguousarray(decode_frames(entry, config, max_frames=config.max_frames or None))
