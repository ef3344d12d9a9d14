"""The record every source yields."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of one stream.

    Args:
        stream: stream id (unique per source in one process), used in MQTT topics.
        seq: sequence number within the stream, strictly increasing from 0. A gap
            (e.g. a probe reconnect) shows as a jump; the source reports it.
        t_capture: wall-clock capture time, seconds since the epoch (``time.time()``).
        image: uint8 array, (H, W) gray or (H, W, 3) RGB. Treat as read-only.
    """

    stream: str
    seq: int
    t_capture: float
    image: np.ndarray
