"""The stream resampler keeps the frames training's decoder keeps (sources.video.resample)."""

from __future__ import annotations

import numpy as np
import pytest

from sources.frame import Frame
from sources.video import resample
from streamer.resample import FrameResampler

IMAGE = np.zeros((2, 2), np.uint8)


@pytest.mark.parametrize("rate", [30.0, 25.0, 23.98, 60.0, 12.0])
def test_keeps_the_frames_the_training_decoder_keeps(rate):
    n = int(rate * 7)
    times = [i / rate for i in range(n)]
    trained = {i for _, i in resample(iter(zip(times, range(n))), fps=8.0)}
    live = FrameResampler(8.0)  # by capture time, from an arbitrary wall-clock start
    kept = {i for i in range(n) if live.keep(Frame("s", i, 1_700_000_000.0 + times[i], IMAGE))}
    assert kept == trained
    assert live.kept == len(kept) and live.kept + live.left_out == n


def test_a_slower_stream_keeps_every_frame_and_warns_once(caplog):
    live = FrameResampler(8.0)
    with caplog.at_level("WARNING"):
        assert all(live.keep(Frame("probe", i, 100.0 + i / 5, IMAGE)) for i in range(40))
    assert [r.getMessage() for r in caplog.records if "below the model's" in r.getMessage()] == [
        "stream  runs at 5 fps, below the model's 8 fps: frames are not repeated, so a window spans more time than "
        "in training; use a faster source or a model trained at a lower data.fps"
    ]
