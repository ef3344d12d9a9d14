"""Per-stream counters: every frame in is counted once as forwarded, skipped, dropped or resampled out.

A frame is *resampled out* when the stream runs faster than the model's frame rate and the
resampler (streamer/resample.py) leaves it out before windowing.

A frame is *dropped* when the overload policy throws it away before it reaches the windower. The
others wait (``pending``) until the last window that contains them has been classified (the
window's ``retire`` list); then they are *forwarded* if any window picked them for the classifier,
else *skipped*.

Latency is the pipeline's: capture of a window's last frame (and the window's close) to its
prediction handed to the sinks, over the windows that closed full. A window closed early and
padded (the stream paused for ``--gap`` seconds, or ended) waited for the pause before it closed,
so its capture -> published time measures the pause, not the pipeline: those windows are counted
(``windows_flushed``) and their latency is reported apart (``latency_flushed_ms``).

The latency percentiles (over the last 4096 windows) are recomputed at most once a second, and
for the final stats: a snapshot goes to the observers with every window.

``fps_in`` is the input rate over the whole run; ``fps_recent`` the rate over the last
``RECENT_S`` seconds (0 once a stream has stalled that long), what a dashboard should show.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

import numpy as np

from sinks.messages import Stats

from .inference.rounds import EXITS
from .window import Window

_LATENCY_SAMPLES = 4096  # recent predictions kept for the percentiles
RECENT_S = 5.0  # seconds of arrivals behind ``fps_recent``
PERCENTILES_EVERY_S = 1.0  # latency percentiles are recomputed at most this often (and for the final stats)
_RECENT_MAX = 8192  # arrival times kept for it (above 1,600 fps the span shrinks to these)


def percentiles(samples: Iterable[float]) -> dict[str, float]:
    """p50/p95/p99 of the samples in milliseconds (zeros when there are none)."""
    arr = np.fromiter(samples, dtype=np.float64)
    if arr.size == 0:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2)}


def frame_counts(samples: Iterable[int]) -> dict[str, float]:
    """Mean, p50 and p95 of the frames used per window (recent windows; zeros when none)."""
    arr = np.fromiter(samples, dtype=np.float64)
    if arr.size == 0:
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0}
    p50, p95 = np.percentile(arr, [50, 95])
    return {"mean": round(float(arr.mean()), 3), "p50": round(float(p50), 2), "p95": round(float(p95), 2)}


class StreamStats:
    """Counters of one stream.

    Args:
        stream: stream id.
        num_frames: window length T (for ``compute_saved``).
        clock: the monotonic clock behind the frame rates (a parameter for tests).
    """

    def __init__(self, *, stream: str, num_frames: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.num_frames = num_frames
        self.frames_in = 0
        self.frames_forwarded = 0
        self.frames_skipped = 0
        self.frames_dropped = 0
        self.frames_resampled_out = 0
        self.windows = 0
        self.windows_flushed = 0  # closed early and padded (a pause, the stream's end)
        self.frames_embedded = 0
        self.frames_used: deque[int] = deque(maxlen=_LATENCY_SAMPLES)  # per window (recent ones)
        self.exits = {name: 0 for name in EXITS}
        self._picked: set[int] = set()
        self._t_start: float | None = None
        self._t_last_in: float | None = None
        self._clock = clock
        self._recent: deque[float] = deque(maxlen=_RECENT_MAX)  # arrival times of the last RECENT_S s
        # full windows only (see the module docstring)
        self.latency_ms: deque[float] = deque(maxlen=_LATENCY_SAMPLES)  # capture -> published
        self.close_latency_ms: deque[float] = deque(maxlen=_LATENCY_SAMPLES)  # window close -> published
        self.flushed_latency_ms: deque[float] = deque(maxlen=_LATENCY_SAMPLES)  # early-closed: capture -> published
        self._latency: tuple[dict[str, float], ...] | None = None  # the three percentile sets, and when made
        self._t_latency = float("-inf")

    def frame_in(self) -> None:
        now = self._clock()
        if self._t_start is None:
            self._t_start = now
        self._t_last_in = now
        self._recent.append(now)
        self.frames_in += 1

    def fps_recent(self) -> float:
        """Frames per second over the last ``RECENT_S`` seconds (over the time since the first
        frame when the stream is younger; 0 when no frame came in that long)."""
        now = self._clock()
        while self._recent and self._recent[0] < now - RECENT_S:
            self._recent.popleft()
        if not self._recent or self._t_start is None:
            return 0.0
        span = RECENT_S
        if len(self._recent) == _RECENT_MAX:  # faster than the deque holds: its own span
            span = now - self._recent[0]
        elif now - self._t_start < RECENT_S:
            span = now - self._t_start
        return len(self._recent) / span if span > 0 else 0.0

    def dropped(self, n: int = 1) -> None:
        self.frames_dropped += n

    def resampled_out(self, n: int = 1) -> None:
        self.frames_resampled_out += n

    def window_done(
        self, window: Window, picked: Iterable[int], frames_embedded: int, *, exit: str | None = None
    ) -> None:
        """Record a classified window (or a retire-only one: no frames, nothing picked); ``exit``:
        why the engine stopped adding frames to it (see ``Prediction.exit``)."""
        picked = tuple(picked)
        if window.frames:
            self.windows += 1
            self.frames_used.append(len(picked))
            if exit is not None:
                self.exits[exit] = self.exits.get(exit, 0) + 1
        self.frames_embedded += frames_embedded
        self._picked.update(picked)
        for seq in window.retire:
            if seq in self._picked:
                self._picked.discard(seq)
                self.frames_forwarded += 1
            else:
                self.frames_skipped += 1

    def published(self, *, t_capture_last: float, t_close: float, padded: int = 0, now: float | None = None) -> None:
        """A prediction handed to the sinks; ``padded`` > 0: its window closed early (reported apart)."""
        now = time.time() if now is None else now
        if padded:
            self.windows_flushed += 1
            self.flushed_latency_ms.append((now - t_capture_last) * 1000.0)
            return
        self.latency_ms.append((now - t_capture_last) * 1000.0)
        self.close_latency_ms.append((now - t_close) * 1000.0)

    @property
    def pending(self) -> int:
        return (
            self.frames_in
            - self.frames_forwarded
            - self.frames_skipped
            - self.frames_dropped
            - self.frames_resampled_out
        )

    def snapshot(
        self, *, bad_messages: int = 0, upstream_dropped: int = 0, final: bool = False, extra: dict | None = None
    ) -> Stats:
        """The counters as a Stats record.

        Args:
            bad_messages: malformed messages the source rejected.
            upstream_dropped: frames a live source itself dropped before handing them over (its
                own overflow); counted as both in and dropped so that every frame is accounted for.
            final: the last stats of the stream.
            extra: more counters to publish.
        """
        elapsed = 0.0
        if self._t_start is not None and self._t_last_in is not None:
            elapsed = self._t_last_in - self._t_start
        fps = (self.frames_in - 1) / elapsed if elapsed > 0 else 0.0
        full_work = self.windows * self.num_frames
        saved = 1.0 - self.frames_embedded / full_work if full_work else 0.0
        now = self._clock()
        if final or self._latency is None or now - self._t_latency >= PERCENTILES_EVERY_S:
            # a snapshot goes with every window: 4096 samples' percentiles (about 0.3 ms a set) once a second
            self._latency = tuple(map(percentiles, (self.latency_ms, self.close_latency_ms, self.flushed_latency_ms)))
            self._t_latency = now
        latency, close, flushed = self._latency
        return Stats(
            stream=self.stream,
            frames_in=self.frames_in + upstream_dropped,
            frames_forwarded=self.frames_forwarded,
            frames_skipped=self.frames_skipped,
            frames_dropped=self.frames_dropped + upstream_dropped,
            frames_pending=self.pending,
            bad_messages=bad_messages,
            windows=self.windows,
            fps_in=round(fps, 2),
            latency_ms=latency,
            compute_saved=round(saved, 4),
            final=final,
            frames_resampled_out=self.frames_resampled_out,
            extra={
                "latency_close_ms": close,
                "latency_flushed_ms": flushed,
                "windows_flushed": self.windows_flushed,
                "fps_recent": round(self.fps_recent(), 2),
                "frames_embedded": self.frames_embedded,
                "frames_per_window": frame_counts(self.frames_used),
                "exits": dict(self.exits),
                **(extra or {}),
            },
        )
