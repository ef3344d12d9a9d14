"""Per-stream counters: every frame in is counted once as forwarded, skipped, dropped or resampled out.

A frame is *resampled out* when the stream runs faster than the model's frame rate and the
resampler (streamer/resample.py) leaves it out before windowing.

A frame is *dropped* when the overload policy throws it away before it reaches the windower. The
others wait (``pending``) until the last window that contains them has been classified (the
window's ``retire`` list); then they are *forwarded* if any window picked them for the classifier,
else *skipped*.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

import numpy as np

from sinks.messages import Stats

from .window import Window

_LATENCY_SAMPLES = 4096  # recent predictions kept for the percentiles


def percentiles(samples: Iterable[float]) -> dict[str, float]:
    """p50/p95/p99 of the samples in milliseconds (zeros when there are none)."""
    arr = np.fromiter(samples, dtype=np.float64)
    if arr.size == 0:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2)}


class StreamStats:
    """Counters of one stream.

    Args:
        stream: stream id.
        num_frames: window length T (for ``compute_saved``).
    """

    def __init__(self, *, stream: str, num_frames: int) -> None:
        self.stream = stream
        self.num_frames = num_frames
        self.frames_in = 0
        self.frames_forwarded = 0
        self.frames_skipped = 0
        self.frames_dropped = 0
        self.frames_resampled_out = 0
        self.windows = 0
        self.frames_embedded = 0
        self._picked: set[int] = set()
        self._t_start: float | None = None
        self._t_last_in: float | None = None
        self.latency_ms: deque[float] = deque(maxlen=_LATENCY_SAMPLES)  # capture -> published
        self.close_latency_ms: deque[float] = deque(maxlen=_LATENCY_SAMPLES)  # window close -> published

    def frame_in(self) -> None:
        now = time.monotonic()
        if self._t_start is None:
            self._t_start = now
        self._t_last_in = now
        self.frames_in += 1

    def dropped(self, n: int = 1) -> None:
        self.frames_dropped += n

    def resampled_out(self, n: int = 1) -> None:
        self.frames_resampled_out += n

    def window_done(self, window: Window, picked: Iterable[int], frames_embedded: int) -> None:
        """Record a classified window (or a retire-only one: no frames, nothing picked)."""
        if window.frames:
            self.windows += 1
        self.frames_embedded += frames_embedded
        self._picked.update(picked)
        for seq in window.retire:
            if seq in self._picked:
                self._picked.discard(seq)
                self.frames_forwarded += 1
            else:
                self.frames_skipped += 1

    def published(self, *, t_capture_last: float, t_close: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
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
            latency_ms=percentiles(self.latency_ms),
            compute_saved=round(saved, 4),
            final=final,
            frames_resampled_out=self.frames_resampled_out,
            extra={
                "latency_close_ms": percentiles(self.close_latency_ms),
                "frames_embedded": self.frames_embedded,
                **(extra or {}),
            },
        )
