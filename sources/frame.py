"""The record every source yields."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Segment:
    """A part of a stream that stands on its own, such as one file (instance) of a DICOM exam:
    the pipeline never lets a window span two segments, and each prediction names its segment.

    Args:
        name: what it is to a person, e.g. the file's path relative to the folder played.
        instance: the DICOM SOP Instance UID, when there is one.
    """

    name: str
    instance: str | None = None


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of one stream.

    Args:
        stream: stream id (unique per source in one process), used in MQTT topics.
        seq: sequence number within the stream, strictly increasing from 0. A gap
            (e.g. a probe reconnect) shows as a jump; the source reports it.
        t_capture: wall-clock capture time, seconds since the epoch (``time.time()``).
        image: uint8 array, (H, W) gray or (H, W, 3) RGB. Treat as read-only.
        segment: the part of the stream the frame belongs to (a DICOM folder's file); None for
            sources without parts.
    """

    stream: str
    seq: int
    t_capture: float
    image: np.ndarray
    segment: Segment | None = None
