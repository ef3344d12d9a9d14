"""How a stream is cut into windows: the one rule training and the runtime share.

Windows start at stream positions 0, S, 2S, ... and hold T positions: window ``i`` covers
``[i*S, i*S + T)`` and is complete when its last position arrives. At the end of a stream (or
when it pauses) one partial window holds the positions that no complete window reached; when
every position was already in the last window there is none. With S > T the positions between
two windows belong to no window.

:class:`WindowSchedule` applies the rule position by position (what ``streamer.window.Windower``
does with live frames); :func:`window_bounds` applies it to a whole video of known length (what
training and the video-level scores do).
"""

from __future__ import annotations

OUTSIDE = -1
"""What :meth:`WindowSchedule.push` returns for a position that lies in no window (S > T)."""


class WindowSchedule:
    """The window rule over positions, one position at a time.

    Args:
        num_frames: window length T (>= 1).
        stride: distance S between window starts (>= 1).
    """

    def __init__(self, num_frames: int, stride: int) -> None:
        if num_frames < 1 or stride < 1:
            raise ValueError(f"window length and stride must be >= 1, got T={num_frames}, S={stride}")
        self.num_frames = int(num_frames)
        self.stride = int(stride)
        self.start = 0  # position of the next window's first frame
        self.pos = 0  # position the next pushed frame gets
        self.covered_end = 0  # one past the last position of the last window

    def push(self) -> tuple[int, int] | int | None:
        """Take the next position: the ``(start, end)`` of the window it completes, :data:`OUTSIDE`
        when it lies between two windows (S > T), or None while a window is still open."""
        pos = self.pos
        self.pos += 1
        if pos < self.start:
            return OUTSIDE
        if pos - self.start + 1 < self.num_frames:
            return None
        bounds = (self.start, self.start + self.num_frames)
        self.covered_end = bounds[1]
        self.start += self.stride
        return bounds

    def flush(self) -> tuple[int, int] | None:
        """End the stream (or a pause in it): the ``(start, end)`` of the partial window holding the
        positions no window reached yet, or None. Positions pushed afterwards start a new schedule
        at once."""
        bounds = (self.start, self.pos) if self.start < self.pos and self.pos > self.covered_end else None
        self.covered_end = self.pos
        self.start = max(self.start, self.pos)
        return bounds


def window_bounds(num_frames: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``[start, end)`` of every window the runtime classifies in a video of ``num_frames``."""
    schedule = WindowSchedule(window, stride)
    out = [b for b in (schedule.push() for _ in range(num_frames)) if isinstance(b, tuple)]
    last = schedule.flush()
    return out + [last] if last else out
