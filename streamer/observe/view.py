"""What the web view shows, kept with bounded memory and filled without ever waiting.

The pipeline *offers* items (:meth:`ViewState.frame`, :meth:`ViewState.window`,
:meth:`ViewState.stats`): each call stores a reference to the newest item and returns; nothing
is encoded or copied then. JPEGs are made only when a browser asks, at most ``live_fps`` times a
second per stream for the live image, once per window for the thumbnails, in a worker thread.
Per stream the state holds the latest frame, the last closed window (its T frames and the
sampler's score of each), the latest stats and at most ``history_s`` seconds of class
probabilities (capped at ``MAX_HISTORY`` points).

The live image is the source's preview when it has one (:mod:`sources.preview`: the image as it
came, before it was resized for the model), else the latest frame; it keeps its aspect ratio, at
most ``live_size`` pixels on its longest side. The window's thumbnails are the model's frames,
stretched back to the stream's own aspect ratio.
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
LIVE_STEP = 160  # live images are encoded at a longest side that is a multiple of this
# Per-window figures a WindowResult may carry (the engine's early exit: frames it used, why it
# stopped, its k_max); each one present is passed to the page with the window.
WINDOW_FIGURES = ("frames_used", "exit", "k_max")


def encode_jpeg(
    image: np.ndarray, max_side: int, quality: int = 80, *, aspect: float | None = None
) -> tuple[bytes, tuple[int, int]]:
    """uint8 gray (H, W) or RGB (H, W, 3) -> (JPEG bytes, (width, height)), scaled (area) so that
    its longest side is at most ``max_side``; ``aspect`` (width / height) stretches it to that
    aspect ratio first (a model frame back to its stream's shape)."""
    h, w = image.shape[:2]
    if aspect is not None and abs(w / h - aspect) > 0.01:
        w = max(1, round(h * aspect))
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != (image.shape[1], image.shape[0]):
        grow = size[0] > image.shape[1] or size[1] > image.shape[0]
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR if grow else cv2.INTER_AREA)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - cv2 encodes any uint8 image
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes(), size


@dataclass
class _Live:
    """The latest live JPEG at one size."""

    jpeg: bytes | None = None
    src: np.ndarray | None = None  # the image it was made from
    t: float = float("-inf")  # when it was made (or reserved)


@dataclass
class _LastWindow:
    index: int
    frames: tuple[Frame, ...]
    selected: tuple[int, ...]
    prediction: Prediction
    t_close: float
    scores: tuple[float, ...] = ()
    figures: dict[str, Any] = field(default_factory=dict)
    thumbs: list[str] | None = None  # data URLs, made on the first request


@dataclass
class StreamView:
    """The view of one stream."""

    name: str
    latest: Frame | None = None
    t_latest: float | None = None  # monotonic time of the latest frame
    frames_seen: int = 0
    preview: Any = None  # the source's sources.preview.Preview, when it has one
    live: dict[int, _Live] = field(default_factory=dict)  # by longest side: a few sizes at most
    aspect: float | None = None  # width / height of the stream's own images
    window: _LastWindow | None = None
    stats: Stats | None = None
    history: deque[tuple[float, tuple[float, ...]]] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))

    def live_image(self) -> np.ndarray | None:
        """The newest image to show: the source's preview, else the latest frame."""
        image = getattr(self.preview, "image", None)
        if image is None and self.latest is not None:
            image = self.latest.image
        return image


class ViewState:
    """The latest items of every stream (see the module docstring).

    Args:
        live_fps: most live-image encodes per second per stream and size.
        live_size: longest side of the live image in pixels, at most (a browser asks for the size
            it shows, rounded up to a multiple of ``LIVE_STEP``).
        thumb_size: longest side of a window thumbnail in pixels.
        history_s: seconds of class probabilities kept for the chart.
    """

    def __init__(
        self, *, live_fps: float = 4.0, live_size: int = 640, thumb_size: int = 112, history_s: float = 300.0
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
        self,
        frames: tuple[Frame, ...],
        selected: tuple[int, ...],
        prediction: Prediction,
        t_close: float,
        now: float,
        *,
        scores: tuple[float, ...] = (),
        figures: dict[str, Any] | None = None,
    ) -> None:
        """The last closed window; ``now`` (wall clock) places its probabilities on the chart."""
        view = self.stream(prediction.stream)
        view.window = _LastWindow(prediction.window, frames, selected, prediction, t_close, scores, figures or {})
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
    def live_side(self, asked: int | None) -> int:
        """The longest side to encode for a browser that shows the image ``asked`` pixels large:
        rounded up to a multiple of LIVE_STEP, at most ``live_size`` (None: ``live_size``)."""
        if asked is None:
            return self.live_size
        return max(LIVE_STEP, min(self.live_size, -(-asked // LIVE_STEP) * LIVE_STEP))

    def live_jpeg(self, stream: str, now: float, side: int | None = None) -> tuple[bytes | None, np.ndarray | None]:
        """The cached JPEG of ``side`` pixels (default ``live_size``) and, when a fresher image should
        be encoded now, that image (at most ``live_fps`` encodes per second per stream and size,
        however many browsers ask)."""
        view = self.streams.get(stream)
        image = None if view is None else view.live_image()
        if view is None or image is None:
            return None, None
        live = view.live.setdefault(side or self.live_size, _Live())
        stale = image is not live.src and now - live.t >= 1.0 / self.live_fps
        if not stale and live.jpeg is not None:
            return live.jpeg, None
        live.t = now  # reserved: concurrent requests get the cached image meanwhile
        return live.jpeg, image

    def store_live(self, stream: str, image: np.ndarray, jpeg: bytes, now: float, side: int | None = None) -> None:
        live = self.stream(stream).live.setdefault(side or self.live_size, _Live())
        live.jpeg, live.src, live.t = jpeg, image, now

    def aspect(self, stream: str) -> float | None:
        """Width / height of the stream's own images (None before the first)."""
        view = self.streams.get(stream)
        if view is None:
            return None
        image = view.live_image()
        if image is not None:
            view.aspect = image.shape[1] / image.shape[0]
        return view.aspect

    def state(self, *, since: float = 0.0) -> dict[str, Any]:
        """JSON-ready summary: per stream its stats, last window (without images), its aspect
        ratio and the probability points newer than ``since`` (a wall-clock time)."""
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
                **self.empty_state(),
                "frames_seen": view.frames_seen,
                "latest_seq": view.latest.seq if view.latest is not None else None,
                "aspect": self.aspect(name),
                "stats": view.stats.to_dict() if view.stats is not None else None,
                "window": None if w is None else self.window_summary(w),
                "history": [[t, *p] for t, p in view.history if t > since],
            }
        return out

    @staticmethod
    def empty_state() -> dict[str, Any]:
        """What :meth:`state` says of a stream that has sent nothing yet."""
        return {"frames_seen": 0, "latest_seq": None, "aspect": None, "stats": None, "window": None, "history": []}

    @staticmethod
    def window_summary(w: _LastWindow) -> dict[str, Any]:
        p = w.prediction
        return {
            "index": w.index,
            "seqs": [f.seq for f in w.frames],
            "selected": list(w.selected),
            "scores": list(w.scores),
            "padded": p.padded,
            "gap_before": p.gap_before,
            "label": p.label,
            "probs": p.probs,
            "latency_ms": p.latency_ms,
            "t_close": w.t_close,
            "figures": w.figures,
        }

    def last_window(self, stream: str) -> _LastWindow | None:
        view = self.streams.get(stream)
        return None if view is None else view.window

    def thumbnails(self, w: _LastWindow, aspect: float | None = None) -> list[str]:
        """The window's frames as JPEG data URLs at the stream's aspect ratio (blocking: call in a
        worker thread)."""
        if w.thumbs is None:
            w.thumbs = [
                "data:image/jpeg;base64,"
                + base64.b64encode(encode_jpeg(f.image, self.thumb_size, aspect=aspect)[0]).decode()
                for f in w.frames
            ]
        return w.thumbs
