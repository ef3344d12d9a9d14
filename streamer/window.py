"""Sliding windows of T frames with stride S over one stream.

The cut follows :mod:`core.windows` (the rule training shares): windows start at stream positions
0, S, 2S, ... (positions count the frames that reached the windower, so frames dropped by overload
before it are not part of any window), window ``i`` covers positions ``[i*S, i*S + T)`` and is
emitted when its last frame arrives; ``flush`` emits the last, partial window at the end of a
stream so that no frame is left undecided.

Each window also says which frames it *retires*: the frames no later window will contain, whose
fate (forwarded or skipped) is therefore final once this window has been classified. With
``S <= T`` window ``i`` retires positions ``[i*S, (i+1)*S)``; with ``S > T`` the frames between
two windows belong to no window and the next window retires them too (as skipped).

At the end of a stream ``flush`` returns a partial window when some frames were in no window
yet; when every remaining frame was already in the last window it returns a window with no
frames that only retires them (nothing to classify).

A stream that pauses (a probe that loses contact, a sender that stops) is flushed the same way in
mid-stream: the pipeline closes the open window, padded, when no frame has come for a while or
when the next frame's capture time jumps. The windower then starts afresh with the next frame,
and :meth:`Windower.mark_gap` puts the gap on the first window after it (``gap_before_ms``).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from core.windows import OUTSIDE, WindowSchedule
from sources.frame import Frame


@dataclass(frozen=True, slots=True)
class Window:
    """One window of one stream, ready for the sampler.

    Attributes:
        stream: stream id.
        index: window number within the stream, from 0.
        num_frames: T, the window length the model expects.
        frames: the real frames, in order (fewer than T only for the final window; empty for a
            window that only retires frames at the end of a stream).
        retire: sequence numbers whose fate is final once this window is classified.
        t_close: wall-clock time the window closed (its last frame arrived, or the flush).
        gap_before_ms: capture-time gap before this window's frames when the stream paused in
            between (0.0 when it did not); see :meth:`Windower.mark_gap`.
    """

    stream: str
    index: int
    num_frames: int
    frames: tuple[Frame, ...]
    retire: tuple[int, ...]
    t_close: float
    gap_before_ms: float = 0.0

    @property
    def padded(self) -> int:
        """Number of empty frames needed to fill the window up to T."""
        return self.num_frames - len(self.frames)

    @property
    def seqs(self) -> tuple[int, ...]:
        return tuple(f.seq for f in self.frames)


class Windower:
    """Turns one stream's frames into windows.

    Args:
        stream: stream id put on every window.
        num_frames: window length T (>= 1).
        stride: distance S between window starts (>= 1).
    """

    def __init__(self, *, stream: str, num_frames: int, stride: int) -> None:
        self.stream = stream
        self._schedule = WindowSchedule(num_frames, stride)
        self.num_frames = num_frames
        self.stride = stride
        self._buf: deque[Frame] = deque()  # frames from the next window's first position on
        self._index = 0
        self._gap: list[int] = []  # seqs in no window (stride > T), retired by the next window
        self._gap_before_ms = 0.0  # a pause to put on the next window with frames

    @property
    def next_in_window(self) -> bool:
        """Whether the next pushed frame will be part of a window (False in a stride > T gap)."""
        return self._schedule.pos >= self._schedule.start

    @property
    def open(self) -> bool:
        """Whether some frames are in no emitted window yet (a flush would classify them)."""
        return self._schedule.pos > self._schedule.covered_end and bool(self._buf)

    def mark_gap(self, ms: float) -> None:
        """Record a pause in the stream; the next window with frames carries it as ``gap_before_ms``."""
        self._gap_before_ms = max(self._gap_before_ms, ms)

    def push(self, frame: Frame) -> Window | None:
        """Add the next frame; return the window it completes, if any."""
        step = self._schedule.push()
        if step == OUTSIDE:  # stride > T: between two windows
            self._gap.append(frame.seq)
            return None
        self._buf.append(frame)
        if step is None:
            return None
        frames = tuple(self._buf)
        n_retire = min(self.stride, len(frames))  # the rest is shared with the next window
        retire = [self._buf.popleft().seq for _ in range(n_retire)]
        return self._make(frames, retire)

    def flush(self) -> Window | None:
        """Retire every frame still undecided (None if there is none): at the end of a stream, or
        when it pauses. Frames pushed afterwards start a new window schedule."""
        if not self._buf and not self._gap:
            return None
        frames = tuple(self._buf)
        retire = [f.seq for f in frames]
        self._buf.clear()
        if self._schedule.flush() is None:  # all already seen by the last window
            frames = ()
        return self._make(frames, retire)

    def _make(self, frames: tuple[Frame, ...], retire: list[int]) -> Window:
        window = Window(
            stream=self.stream,
            index=self._index,
            num_frames=self.num_frames,
            frames=frames,
            retire=tuple(self._gap + retire),
            t_close=time.time(),
            gap_before_ms=self._gap_before_ms if frames else 0.0,
        )
        self._gap.clear()
        if frames:
            self._index += 1
            self._gap_before_ms = 0.0
        return window
