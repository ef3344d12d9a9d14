"""Resample a stream to the model's frame rate before windowing (what training did to its videos).

A model trained on clips resampled to 8 fps expects a window of T frames to span T / 8 seconds.
Fed a 30 fps stream frame by frame, the same window would span a quarter of that. The
:class:`FrameResampler` keeps, of each stream, the frames nearest to the times ``j / fps``
(j = 0, 1, ...) counted from the stream's first frame: :class:`core.resample.FrameGrid`, the rule
training applies when it decodes a video. The frames left out are counted as
``frames_resampled_out`` (their own outcome in the stats).

Times: a replayed source (a file, the synthetic generator) uses the media time of the frame it
released last (``media_time``: the file's own timestamp, as training's decoder reads it), so
``--no-pacing`` and ``--speed`` replays and variable-frame-rate files resample the content, not
the wall clock; every other source uses ``t_capture``.

A stream slower than the model's rate is not upsampled (frames are never repeated): every frame
is kept and one warning says so.
"""

from __future__ import annotations

import logging
from typing import Any

from core.resample import FrameGrid
from sources.frame import Frame

log = logging.getLogger(__name__)

_RATE_PROBE_FRAMES = 16  # frames seen before the input rate is estimated (for the warning)


class FrameResampler:
    """Decides, frame by frame, whether a frame of one stream is kept at ``fps``.

    Args:
        fps: the model's frame rate (frames per second the windows should hold).
        source: the stream's source; its ``name``, its nominal ``rate`` (for the warning) and,
            for a replayed source, the ``media_time`` of each frame it just released are read.
    """

    def __init__(self, fps: float, source: Any = None) -> None:
        self.grid = FrameGrid(fps)
        self.fps = self.grid.fps
        self.source = source
        self.stream = getattr(source, "name", "")
        self.media = False  # True: times are the source's media_time (a replay)
        self.kept = 0
        self.left_out = 0
        self._started = False
        self._seen = 0
        self._warned = False

    def time_of(self, frame: Frame) -> float:
        return float(self.source.media_time) if self.media else frame.t_capture

    def keep(self, frame: Frame) -> bool:
        """True when ``frame`` is the one nearest to a grid time (so it goes on to the windows)."""
        if not self._started:
            self._started = True
            self._start()
        t = self.time_of(frame)
        self._seen += 1
        if self.grid.t0 is not None:
            self._check_rate(t - self.grid.t0)
        kept = self.grid.count(t) > 0
        if kept:
            self.kept += 1
        else:
            self.left_out += 1
        return kept

    def _start(self) -> None:
        rate = getattr(self.source, "rate", None)
        self.media = getattr(self.source, "media_time", None) is not None
        if rate:
            self._warned = True  # the nominal rate says it now; no need to estimate it
            if rate < self.fps * 0.95:
                self._warn(float(rate))

    def _check_rate(self, rel: float) -> None:
        if self._warned or self._seen < _RATE_PROBE_FRAMES or rel <= 0:
            return
        self._warned = True
        rate = (self._seen - 1) / rel
        if rate < self.fps * 0.95:
            self._warn(rate)

    def _warn(self, rate: float) -> None:
        log.warning(
            "stream %s runs at %.3g fps, below the model's %.3g fps: frames are not repeated, so a window spans more "
            "time than in training; use a faster source or a model trained at a lower data.fps",
            self.stream,
            rate,
            self.fps,
        )


def make_resampler(fps: float | None, source: Any) -> FrameResampler | None:
    """The resampler for one source, or None when the model records no frame rate (old model files)."""
    return FrameResampler(fps, source) if fps else None
