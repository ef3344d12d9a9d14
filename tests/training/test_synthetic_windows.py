"""Synthetic training data as the runtime sees it (data.synthetic_video_frames): the windows are
the ones streamer.window.Windower cuts from the same frames."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import ConfigError
from sources.frame import Frame
from streamer.window import Windower
from training.clips import SPLITS
from training.config import DataConfig, config_from_dict
from training.datasets import make_synthetic_dataset, synthetic_videos


def runtime_windows(frames: np.ndarray, num_frames: int, stride: int) -> list[np.ndarray]:
    """What the runtime classifies in a stream of these frames: every window's real frames, in order."""
    w = Windower(stream="s", num_frames=num_frames, stride=stride)
    out = [win for i, image in enumerate(frames) if (win := w.push(Frame("s", i, float(i), image))) is not None]
    if (last := w.flush()) is not None and last.frames:
        out.append(last)
    return [np.stack([f.image for f in win.frames]) for win in out]


@pytest.mark.parametrize("stride", [0, 4, 12])  # 0: T, the runtime default; overlapping; with a gap
def test_windows_are_the_runtime_cuts_of_each_video(stride):
    config = DataConfig(
        kind="synthetic",
        size=24,
        num_frames=8,
        synthetic_counts=(3, 3, 3),
        synthetic_video_frames=21,
        window_stride=stride,
    )
    data = make_synthetic_dataset(config)
    for split, (videos, labels) in zip(SPLITS, synthetic_videos(config)):
        clips = data.split(split)
        assert clips.x.shape[1:] == (8, 24, 24) and clips.x.dtype == np.uint8
        row = 0
        for j, (video, label) in enumerate(zip(videos, labels)):
            assert video.shape == (21, 24, 24)
            for k, expected in enumerate(runtime_windows(video, 8, stride or 8)):
                n = len(expected)
                assert clips.names[row] == f"{split}/{j}#{k}" and clips.labels[row] == label
                assert clips.valid[row].tolist() == [True] * n + [False] * (8 - n)  # padding masked
                assert np.array_equal(clips.x[row, :n], expected) and not clips.x[row, n:].any()
                row += 1
        assert row == len(clips)
    # 21 frames, T=8: stride 8 -> [0,8) [8,16) [16,21)+3 padding; stride 4 -> starts 0,4,..,12 and
    # the flushed [16,21); stride 12 -> [0,8) [12,20), frame 20 falls in the gap after the last
    # window, which the runtime skips too
    per_video = {0: 3, 4: 5, 12: 2}[stride]
    assert len(data.train) == 3 * per_video
    assert data.train.valid.sum() == 3 * {0: 21, 4: 4 * 8 + 5, 12: 8 + 8}[stride]


def test_default_demo_shape_is_one_stream_cut_by_the_windower():
    """64-frame segments at T = S = 16 (the demo's shape): the split's windows are exactly what the
    runtime cuts from a stream that plays the split's segments back to back, as `synthetic:` does."""
    config = DataConfig(kind="synthetic", size=16, num_frames=16, synthetic_counts=(3, 3, 3), synthetic_video_frames=64)
    data = make_synthetic_dataset(config)
    videos, labels = synthetic_videos(config)[0]
    assert labels.tolist() == [0, 1, 2]  # the classes cycle like the source's segments
    stream = runtime_windows(np.concatenate(videos), 16, 16)
    assert len(stream) == len(data.train) == 12 and data.train.valid.all()
    assert all(np.array_equal(a, b) for a, b in zip(stream, data.train.x))
    assert data.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_seeded_and_repeatable():
    config = DataConfig(kind="synthetic", size=16, num_frames=8, synthetic_counts=(3, 3, 3), synthetic_video_frames=16)
    a, b = make_synthetic_dataset(config), make_synthetic_dataset(config)
    assert all(np.array_equal(a.split(s).x, b.split(s).x) for s in SPLITS)
    c = make_synthetic_dataset(DataConfig(**{**config.__dict__, "split_seed": 1}))
    assert not np.array_equal(a.train.x, c.train.x)
    assert not np.array_equal(a.val.x, a.test.x)  # each split its own stream
    # The option off: one T-frame clip per sample, as before.
    clips = make_synthetic_dataset(DataConfig(**{**config.__dict__, "synthetic_video_frames": 0}))
    assert clips.train.x.shape == (3, 8, 16, 16)


def test_config_key_is_validated():
    ok = config_from_dict({"data": {"kind": "synthetic", "synthetic_video_frames": 64}})
    assert ok.data.synthetic_video_frames == 64
    with pytest.raises(ConfigError, match=r"data.synthetic_video_frames in <dict> must be 0 .* e.g. 64; got -1"):
        config_from_dict({"data": {"kind": "synthetic", "synthetic_video_frames": -1}})
