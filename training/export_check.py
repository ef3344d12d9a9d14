"""Real windows for the export's self-check (``das-stream export``): the synthetic generator's,
or video files read with the model's preprocessing, cut as ``das-stream run`` cuts a stream."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import ConfigError
from sampler.export import frame_size
from sampler.model import SampledClassifier


def synthetic_windows(model: SampledClassifier, per_class: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Windows (N, T, S, S) uint8 of the synthetic generator at the model's frame size, all valid."""
    from sources.synthetic import CLASSES, make_clip

    T, S = model.config.num_frames, frame_size(model)
    rng = np.random.default_rng(seed)
    clips = [make_clip(c % len(CLASSES), T, size=S, rng=rng) for c in range(per_class * len(CLASSES))]
    return np.stack(clips), np.ones((len(clips), T), bool)


def video_windows(
    model: SampledClassifier, paths: Sequence[str | os.PathLike], per_video: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Windows of video files read with the model's preprocessing (frame rate, size), cut into
    windows of T as ``run`` cuts a stream (stride T, the last one padded): up to ``per_video`` each."""
    from sources.video import read_video

    T, S, fps = model.config.num_frames, frame_size(model), model.preprocessing.get("fps")
    windows, valid = [], []
    for path in paths:
        frames, _ = read_video(Path(path), size=S, fps=fps, max_frames=T * per_video)
        for start in range(0, len(frames), T):
            chunk = frames[start : start + T]
            window = np.zeros((T, S, S), np.uint8)
            window[: len(chunk)] = chunk
            windows.append(window)
            valid.append(np.arange(T) < len(chunk))
    if not windows:
        raise ConfigError("the check videos hold no frames; pass other --check-video files")
    return np.stack(windows), np.stack(valid)


def check_windows(
    model: SampledClassifier, videos: Sequence[str | os.PathLike] = ()
) -> tuple[tuple[np.ndarray, np.ndarray], str]:
    """The windows and their description: of ``videos`` when given, else of the synthetic generator."""
    if videos:
        return video_windows(model, videos), f"{len(videos)} video file(s) at the model's preprocessing"
    return synthetic_windows(model), "synthetic generator"
