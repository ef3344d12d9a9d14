"""What the web view shows, kept with bounded memory and filled without ever waiting.

The pipeline *offers* items (:meth:`ViewState.frame`, :meth:`ViewState.window`,
:meth:`ViewState.stats`): each call stores a reference to the newest item and returns; nothing
is encoded or copied then. JPEGs are made only when a browser asks, at most ``live_fps`` times a
second per stream for the live image, once per window for the thumbnails, in a worker thread.
Per stream the state holds the latest frame, the last closed window (its T frames), the latest
stats and at most ``history_s`` seconds of class probabilities (capped at ``MAX_HISTORY`` points).
"""

from __future__ import annotations

import base64
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from sinks.messages import Prediction, Stats
from sources.frame import Frame

MAX_HISTORY = 4096  # probability points kept per stream, whatever the window rate


def encode_jpeg(image: np.ndarray, max_side: int, quality: int = 80) -> bytes:
    """uint8 gray (H, W) or RGB (H, W, 3) -> JPEG bytes, downscaled (area) so that max(H, W) <= max_side."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - cv2 encodes any uint8 image
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


@dataclass
class _LastWindow:
    index: int
    frames: tuple[Frame, ...]
    selected: tuple[int, ...]
    prediction: Prediction
    t_close: float
    thumbs: list[str] | None = None  # data URLs, made on the first request


@dataclass
class StreamView:
    """The view of one stream."""

    name: str
    latest: Frame | None = None
    t_latest: float | None = None  # monotonic time of the latest frame
    frames_seen: int = 0
    jpeg: bytes | None = None
    jpeg_seq: int | None = None
    t_jpeg: float = float("-inf")
    window: _LastWindow | None = None
    stats: Stats | None = None
    history: deque[tuple[float, tuple[float, ...]]] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))


class ViewState:
    """The latest items of every stream (see the module docstring).

    Args:
        live_fps: most live-image encodes per second per stream.
        live_size: longest side of the live image in pixels.
        thumb_size: longest side of a window thumbnail in pixels.
        history_s: seconds of class probabilities kept for the chart.
    """

    def __init__(
        self, *, live_fps: float = 4.0, live_size: int = 256, thumb_size: int = 96, history_s: float = 300.0
    ) -> None:
        self.live_fps = live_fps
        self.live_size = live_size
        self.thumb_size = thumb_size
        self.history_s = history_s
        self.streams: dict[str, StreamView] = {}
        self.class_names: tuple[str, ...] = ()
        self.model: str | None = None

    def stream(self, name: str) -> StreamView:
        view = self.streams.get(name)
        if view is None:
            view = self.streams[name] = StreamView(name)
        return view

    # --- offered by the pipeline (O(1), no copies) ---
    def frame(self, stream: str, frame: Frame, now: float) -> None:
        view = self.stream(stream)
        view.latest = frame
        view.t_latest = now
        view.frames_seen += 1

    def window(
        self, frames: tuple[Frame, ...], selected: tuple[int, ...], prediction: Prediction, t_close: float, now: float
    ) -> None:
        """The last closed window; ``now`` (wall clock) places its probabilities on the chart."""
        view = self.stream(prediction.stream)
        view.window = _LastWindow(prediction.window, frames, selected, prediction, t_close)
        if not self.class_names:
            self.class_names = tuple(prediction.probs)
        self.model = prediction.model
        t = now
        view.history.append((t, tuple(prediction.probs.get(c, 0.0) for c in self.class_names)))
        while view.history and view.history[0][0] < t - self.history_s:
            view.history.popleft()

    def stats(self, stats: Stats) -> None:
        self.stream(stats.stream).stats = stats

    # --- asked for by the browser ---
    def live_jpeg(self, stream: str, now: float) -> tuple[bytes | None, Frame | None]:
        """The cached JPEG and, when a fresher frame should be encoded now, that frame (at most
        ``live_fps`` encodes per second per stream, however many browsers ask)."""
        view = self.streams.get(stream)
        if view is None or view.latest is None:
            return None, None
        stale = view.jpeg_seq != view.latest.seq and now - view.t_jpeg >= 1.0 / self.live_fps
        if not stale and view.jpeg is not None:
            return view.jpeg, None
        view.t_jpeg = now  # reserved: concurrent requests get the cached image meanwhile
        return view.jpeg, view.latest

    def store_live(self, stream: str, frame: Frame, jpeg: bytes, now: float) -> None:
        view = self.stream(stream)
        view.jpeg, view.jpeg_seq, view.t_jpeg = jpeg, frame.seq, now

    def state(self, *, since: float = 0.0) -> dict[str, Any]:
        """JSON-ready summary: per stream its stats, last window (without images) and the probability
        points newer than ``since`` (a wall-clock time)."""
        out: dict[str, Any] = {
            "t": time.time(),
            "class_names": list(self.class_names),
            "model": self.model,
            "history_s": self.history_s,
            "live_fps": self.live_fps,
            "streams": {},
        }
        for name, view in self.streams.items():
            w = view.window
            out["streams"][name] = {
                "frames_seen": view.frames_seen,
                "latest_seq": view.latest.seq if view.latest is not None else None,
                "stats": view.stats.to_dict() if view.stats is not None else None,
                "window": None if w is None else self.window_summary(w),
                "history": [[t, *p] for t, p in view.history if t > since],
            }
        return out

    @staticmethod
    def empty_state() -> dict[str, Any]:
        """What :meth:`state` says of a stream that has sent nothing yet."""
        return {"frames_seen": 0, "latest_seq": None, "stats": None, "window": None, "history": []}

    @staticmethod
    def window_summary(w: _LastWindow) -> dict[str, Any]:
        p = w.prediction
        return {
            "index": w.index,
            "seqs": [f.seq for f in w.frames],
            "selected": list(w.selected),
            "padded": p.padded,
            "label": p.label,
            "probs": p.probs,
            "latency_ms": p.latency_ms,
            "t_close": w.t_close,
        }

    def last_window(self, stream: str) -> _LastWindow | None:
        view = self.streams.get(stream)
        return None if view is None else view.window

    def thumbnails(self, w: _LastWindow) -> list[str]:
        """The window's frames as JPEG data URLs (blocking: call in a worker thread)."""
        if w.thumbs is None:
            w.thumbs = [
                "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(f.image, self.thumb_size)).decode()
                for f in w.frames
            ]
        return w.thumbs
