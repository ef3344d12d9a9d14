"""Source specs, the strings that pick a source on the command line.

- ``video:PATH``: replay a recorded file (mp4, avi, mov, mpeg, gif).
- ``dicom:PATH``: replay a multi-frame DICOM file (cine loop) or a folder of them.
- ``igtl://HOST:PORT``: IMAGE messages from an OpenIGTLink server (``?device=NAME``, ...).
- ``probe:0``, ``probe:/dev/video0``: a capture device through OpenCV.
- ``probe:udp://127.0.0.1:5000`` (or ``rtsp://``, ``http://``, ...): a network stream through PyAV.
- ``zmq+sub://HOST:PORT``, ``zmq+pull://HOST:PORT``: frames pushed over ZeroMQ; connects unless
  ``?bind=1``; ``?topic=NAME`` for sub; also ``max_frame_bytes``, ``allowed_dtypes``
  (comma-separated), ``queue_size``.
- ``synthetic:``: the built-in ultrasound-like generator; options ``fps``, ``label``, ``seed``,
  ``frames``, ``size``, ``clip_frames`` (``synthetic:?fps=30&label=b_lines&seed=3``).

Options may come in the spec's query string or as keyword arguments of ``parse_source`` (not
both for the same option). ``speed``, ``pacing`` and ``loop`` only apply to replayed sources.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .base import Source
from .dicom import DicomSource
from .errors import SourceError
from .igtl import IgtlSource
from .probe import ProbeSource
from .synthetic import SyntheticSource
from .video import VideoSource
from .zmq_source import ZmqSource

SPEC_FORMS = (
    "video:PATH, dicom:FILE|FOLDER, igtl://HOST:PORT (?device=NAME), probe:INDEX, probe:/dev/videoN, probe:URL (udp://, rtsp://, http://), "
    "zmq+sub://HOST:PORT, zmq+pull://HOST:PORT (?bind=1, ?topic=NAME), "
    "synthetic: (?fps=30&label=b_lines&seed=3&frames=N&size=224)"
)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (use 1/0, true/false)")


def _dtypes(value: Any) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",")) if isinstance(value, str) else tuple(value)


def _optional_int(value: Any) -> int | None:
    return None if value is None or str(value).lower() == "none" else int(value)


_PROBE_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "timeout": float,
    "reconnect_initial": float,
    "reconnect_max": float,
    "max_reconnects": _optional_int,
    "open_attempts": int,
    "queue_size": int,
}
_ZMQ_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "bind": _boolean,
    "topic": str,
    "max_frame_bytes": int,
    "allowed_dtypes": _dtypes,
    "queue_size": int,
}
_SYNTHETIC_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "fps": float,
    "label": lambda v: int(v) if isinstance(v, int) or str(v).isdigit() else str(v),
    "seed": int,
    "frames": _optional_int,
    "size": int,
    "clip_frames": int,
}


def _typed(spec: str, given: Mapping[str, Any], table: Mapping[str, Callable[[Any], Any]]) -> dict[str, Any]:
    """Check option names against ``table`` and convert their values."""
    typed = {}
    for key, value in given.items():
        if key not in table:
            valid = ", ".join(table) or "none"
            raise SourceError(f"unknown option {key!r} for source {spec!r}; valid options: {valid}")
        try:
            typed[key] = table[key](value)
        except (TypeError, ValueError) as exc:
            raise SourceError(f"bad value {value!r} for option {key!r} of source {spec!r}: {exc}") from None
    return typed


def _merge(spec: str, query: str, options: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(options)
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in merged:
            raise SourceError(f"option {key!r} is given twice for source {spec!r} (in the spec and as a keyword); keep one")
        merged[key] = value
    return merged


def _live_only(spec: str, speed: float, pacing: bool, loop: bool) -> None:
    if speed != 1.0 or not pacing or loop:
        raise SourceError(
            f"speed, no-pacing and loop apply to replayed sources (video:, dicom:, synthetic:), not to the live source {spec!r}"
        )


def parse_source(
    spec: str,
    *,
    name: str | None = None,
    speed: float = 1.0,
    pacing: bool = True,
    loop: bool = False,
    gray: bool = True,
    size: int | tuple[int, int] | None = None,
    **options: Any,
) -> Source:
    """Build the source a spec names (see the module docstring for the forms).

    Args:
        spec: the source spec.
        name: stream id; default derived from the spec (file stem, ``probe0``, ``zmq-5555``,
            ``synthetic``).
        speed: replay speed factor (video, synthetic).
        pacing: release replayed frames at their frame rate (False: as fast as possible).
        loop: restart a video when it ends.
        gray: (H, W) gray frames, else (H, W, 3) RGB.
        size: output size, int (square) or (width, height); None keeps the source's. A
            ``synthetic:?size=N`` spec overrides it (the size the clips are generated at).
        options: source-specific options, as in the spec's query string.

    Raises:
        SourceError: unknown scheme (the message lists the valid forms), bad or unknown option.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise SourceError(f"source spec {spec!r} has no scheme; valid forms: {SPEC_FORMS}")
    scheme, _, rest = spec.partition(":")
    if scheme in ("dicom", "igtl"):
        new = DicomSource.from_spec if scheme == "dicom" else IgtlSource.from_spec
        return new(spec, name=name, speed=speed, pacing=pacing, loop=loop, gray=gray, size=size, **options)
    if scheme == "video":
        if not rest:
            raise SourceError(f"source spec {spec!r} needs a path: video:PATH")
        _typed(spec, options, {})
        return VideoSource(rest, name=name, speed=speed, pacing=pacing, loop=loop, gray=gray, size=size)
    if scheme == "probe":
        if not rest:
            raise SourceError(f"source spec {spec!r} needs a device or URL: probe:0, probe:/dev/video0, probe:udp://HOST:PORT")
        _live_only(spec, speed, pacing, loop)
        return ProbeSource(rest, name=name, gray=gray, size=size, **_typed(spec, options, _PROBE_OPTIONS))
    if scheme in ("zmq+sub", "zmq+pull"):
        parts = urlsplit(spec)
        _live_only(spec, speed, pacing, loop)
        typed = _typed(spec, _merge(spec, parts.query, options), _ZMQ_OPTIONS)
        pattern = scheme.split("+")[1]
        return ZmqSource(f"tcp://{parts.netloc}", pattern=pattern, name=name, gray=gray, size=size, **typed)
    if scheme == "synthetic":
        if loop:
            raise SourceError(f"loop applies to video sources; {spec!r} is endless unless frames=N is given")
        typed = _typed(spec, _merge(spec, rest.lstrip("?"), options), _SYNTHETIC_OPTIONS)
        size = typed.pop("size", size)  # the spec's own size wins over the caller's default
        return SyntheticSource(name=name or "synthetic", pacing=pacing, speed=speed, gray=gray, size=size, **typed)
    raise SourceError(f"unknown source spec {spec!r}; valid forms: {SPEC_FORMS}")
