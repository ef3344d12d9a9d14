"""The elastic frame budget: how many frames a window may embed, under load and under a cap.

Two controls, both process-wide (all streams share one engine):

- :class:`FrameBudget` (``--budget FRAMES_PER_S``): a token bucket of backbone frames per second.
  Each engine call may spend what the bucket holds; every window still gets its first round, so
  the bucket can go into debt, and the next calls get less until it refills.
- :class:`ShrinkControl` (overload policy ``shrink``, the default for live sources): the k_max in
  force. When windows back up in front of the engine, k_max halves (down to 1) before a single
  frame is dropped; when the backlog is gone for a while, it doubles back up to the model's k_max.
  Frames are dropped (and counted, as under ``drop_oldest``) only when even one frame per window
  cannot keep up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class FrameBudget:
    """A token bucket of ``rate`` frames per second holding at most one second's worth.

    Args:
        rate: frames per second (> 0).
        clock: seconds (monotonic); injectable for tests.
    """

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"budget must be a finite number of frames per second > 0, got {rate!r}")
        self.rate = float(rate)
        self._clock = clock
        self._tokens = self.rate
        self._last = clock()
        self.spent = 0

    def allowance(self) -> int:
        """Frames the next call may embed (0 while the bucket is in debt)."""
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return max(0, int(self._tokens))

    def spend(self, frames: int) -> None:
        """Take what a call embedded (it may exceed the allowance: first rounds are never refused)."""
        self._tokens -= frames
        self.spent += frames


class ShrinkControl:
    """The k_max in force under overload policy ``shrink``.

    After each engine call the pipeline reports the backlog (windows waiting in front of the
    engine). ``backlog >= high`` halves k_max (not below 1); ``calm`` calls in a row with no
    backlog double it (not above the model's k_max).

    Args:
        k_max: the model's k_max.
        high: the backlog that means the engine is falling behind.
        calm: calls without backlog before k_max grows again.
    """

    def __init__(self, k_max: int, *, high: int, calm: int = 4) -> None:
        self.k_max = self.limit = self.lowest = int(k_max)
        self.high = max(1, int(high))
        self.calm = max(1, int(calm))
        self._quiet = 0
        self.shrinks = self.grows = 0

    def update(self, backlog: int) -> int:
        """The k_max for the next call, given the windows now waiting."""
        if backlog >= self.high:
            self._quiet = 0
            if self.limit > 1:
                self.limit = max(1, self.limit // 2)
                self.lowest = min(self.lowest, self.limit)
                self.shrinks += 1
        elif backlog == 0:
            self._quiet += 1
            if self._quiet >= self.calm and self.limit < self.k_max:
                self.limit = min(self.k_max, self.limit * 2)
                self.grows += 1
                self._quiet = 0
        else:
            self._quiet = 0
        return self.limit
