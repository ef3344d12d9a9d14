"""Prediction and Stats records and their JSON form (the MQTT payload schema).

Both are published as UTF-8 JSON objects. ``to_dict`` is the schema: every field below is
always present. Times are wall-clock seconds since the epoch; latencies are milliseconds.
Payloads are strict JSON: a non-finite number (NaN, Infinity) is never written; should one
reach a record it is published as ``null`` (see :func:`dumps`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(obj: Any) -> bytes:
    """Compact, strict JSON (``allow_nan=False``): non-finite floats become null."""
    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a NaN/Infinity somewhere: never publish invalid JSON
        text = json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False)
    return text.encode()


@dataclass(frozen=True)
class Prediction:
    """The classifier's answer for one window of one stream.

    Attributes:
        stream: stream id.
        window: window index within the stream, from 0.
        first_seq, last_seq: sequence numbers of the window's first and last real frame.
        t_first, t_last: capture times of those frames.
        selected: sequence numbers of the frames the sampler picked (ascending).
        probs: class name -> probability (sums to 1).
        label: the most probable class name.
        model: model name (file stem) and method, e.g. "demo (das)".
        latency_ms: capture of the window's last frame to the moment the prediction was made.
        padded: number of empty frames added to fill a short window: the last one of a stream,
            or one closed early because the stream paused (0 normally).
        gap_before: the stream paused (lost contact, a sender stopped) between the previous
            window and this one; the previous window was closed early, padded.
        gap_ms: how long that pause was, from the capture time of the last frame before it to the
            first frame after it (0.0 when ``gap_before`` is false).
        segment: the part of the stream the window's frames come from, for sources that have
            parts: a DICOM folder's file (its path in the folder); None otherwise. A window
            never spans two segments.
        instance: the DICOM SOP Instance UID of that file (None when not DICOM or absent).
        frames_used: frames whose embeddings the prediction pools (the first ones of the
            sampler's best-first order; ``selected`` are the same frames).
        exit: why the engine stopped adding frames: ``confident`` (the model's exit rule says the
            prediction is settled), ``k_max`` (it used k_max frames or every usable frame) or
            ``budget`` (the process-wide frame budget ran out). ``probs`` are those at exit.
        k_max: the most frames the window could use (lowered under overload policy ``shrink``).
        restarted: the pause was the stream's process restarting (``das-stream cluster``: the
            stream's actor died and Ray restarted it); its window numbers go on.
    """

    stream: str
    window: int
    first_seq: int
    last_seq: int
    t_first: float
    t_last: float
    selected: tuple[int, ...]
    probs: dict[str, float]
    label: str
    model: str
    latency_ms: float
    padded: int = 0
    gap_before: bool = False
    gap_ms: float = 0.0
    segment: str | None = None
    instance: str | None = None
    frames_used: int = 0
    exit: str = "k_max"
    k_max: int = 0
    restarted: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["selected"] = list(self.selected)
        d["type"] = "prediction"
        d["schema"] = SCHEMA_VERSION
        return d

    def to_json(self) -> bytes:
        return dumps(self.to_dict())


@dataclass(frozen=True)
class Stats:
    """Running counters of one stream, published every few seconds and once at the end.

    Every frame in is counted exactly once as forwarded, skipped, dropped or resampled out once
    its fate is known; ``frames_pending`` holds frames still waiting in a window (0 in the final
    stats): ``frames_in = frames_forwarded + frames_skipped + frames_dropped +
    frames_resampled_out + frames_pending``.

    Attributes:
        stream: stream id.
        frames_in: frames received from the source.
        frames_forwarded: frames sent to the classifier (picked by at least one window).
        frames_skipped: frames the sampler left out of every window they were in.
        frames_dropped: frames lost to overload (queue full, oldest dropped).
        frames_pending: frames not yet decided (in a window that has not closed).
        bad_messages: malformed network messages rejected by the source.
        windows: windows classified.
        fps_in: input frame rate over the whole run so far.
        latency_ms: {"p50", "p95", "p99"} capture-to-published latency of predictions.
        compute_saved: fraction of classifier (backbone) work avoided against running it on
            every frame of every window: 1 - frames_embedded / (windows * T).
        final: true for the last stats message of a stream.
        frames_resampled_out: frames left out because the stream runs faster than the model's
            frame rate (the stream is resampled to it before windowing; 0 for models that
            record no frame rate).
        extra: source-specific counters (reconnects, gaps, mqtt buffer overflow, ...).
    """

    stream: str
    frames_in: int
    frames_forwarded: int
    frames_skipped: int
    frames_dropped: int
    frames_pending: int
    bad_messages: int
    windows: int
    fps_in: float
    latency_ms: dict[str, float]
    compute_saved: float
    final: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    frames_resampled_out: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["type"] = "stats"
        d["schema"] = SCHEMA_VERSION
        return d

    def to_json(self) -> bytes:
        return dumps(self.to_dict())
