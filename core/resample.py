"""How a stream is brought to the model's frame rate: the one rule training and the runtime share.

The output grid is the times ``j / fps`` (j = 0, 1, ...) counted from the stream's first frame.
Each grid time goes to the frame nearest to it, decided frame by frame without look-ahead: a
frame's time cell reaches from halfway to the previous frame to halfway to the next one, the next
one being assumed one frame interval later (a tie goes to the later frame). A frame that gets no
grid time is left out.

A frame can get several grid times only when the stream is slower than ``fps``. The runtime never
repeats a frame (a window then spans more time than in training, and it says so); training
repeats it only when asked (``data.upsample: true``), so by default a model learns from the
frames ``das-stream run`` will show it.
"""

from __future__ import annotations


class FrameGrid:
    """Counts, frame by frame, the grid times ``j / fps`` each frame is nearest to.

    Args:
        fps: the output frame rate (> 0).
    """

    def __init__(self, fps: float) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        self.fps = float(fps)
        self.t0: float | None = None
        self._prev = 0.0
        self._next = 0  # index j of the next grid time j / fps

    def count(self, t: float) -> int:
        """How many grid times the frame at time ``t`` (seconds, non-decreasing) is nearest to: 0
        (left out), 1, or more when the stream is slower than ``fps``."""
        if self.t0 is None:
            self.t0, self._prev, self._next = t, 0.0, 1
            return 1
        rel, prev = t - self.t0, self._prev
        self._prev = rel
        upper = rel + max(rel - prev, 0.0) / 2  # end of this frame's time cell
        n = 0
        while self._next / self.fps < upper - 1e-9:
            self._next += 1
            n += 1
        return n
