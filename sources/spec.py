"""Source specs, the strings that pick a source on the command line: ``SCHEME:REST``.

:data:`SOURCES` is the registry: scheme -> :class:`SourceKind` (how the spec looks, and the
source class's ``from_spec`` that reads it). The forms listed in errors (:data:`SPEC_FORMS`) and
in ``das-stream run --help`` (:func:`spec_usage`) come from it, so a new source kind is its own
module plus one line here.

Options may come in the spec's query string (where the kind reads one) or as keyword arguments
of ``parse_source`` (not both for the same option). ``speed``, ``pacing`` and ``loop`` only apply
to replayed sources. Each kind's ``from_spec`` documents its own options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import SourceError

from .base import Source
from .dicom import DicomSource
from .igtl import IgtlSource
from .probe import ProbeSource
from .synthetic import SyntheticSource
from .video import VideoSource
from .zmq_source import ZmqSource


@dataclass(frozen=True)
class SourceKind:
    """One kind of source in the registry.

    Args:
        form: how a spec of this kind looks, e.g. ``video:PATH`` (shown in help and errors).
        from_spec: ``from_spec(spec, *, name, speed, pacing, loop, gray, size, **options)``
            returning the source; raises SourceError naming the fix for a bad spec or option.
        hint: optional options or variants, e.g. ``?bind=1&topic=NAME`` (shown in errors).
    """

    form: str
    from_spec: Callable[..., Source]
    hint: str = ""


# The registry: scheme -> kind, in the order help and errors list them.
SOURCES: dict[str, SourceKind] = {
    "video": SourceKind("video:PATH", VideoSource.from_spec),
    "dicom": SourceKind("dicom:FILE|FOLDER", DicomSource.from_spec),
    "igtl": SourceKind("igtl://HOST:PORT", IgtlSource.from_spec, "?device=NAME"),
    "probe": SourceKind(
        "probe:DEVICE|URL",
        ProbeSource.from_spec,
        "probe:INDEX, probe:/dev/videoN, probe:URL with udp://, rtsp://, http://",
    ),
    "zmq+sub": SourceKind("zmq+sub://HOST:PORT", ZmqSource.from_spec, "?bind=1&topic=NAME"),
    "zmq+pull": SourceKind("zmq+pull://HOST:PORT", ZmqSource.from_spec, "?bind=1"),
    "zmq+rep": SourceKind("zmq+rep://HOST:PORT", ZmqSource.from_spec, "imagezmq REQ/REP senders; binds unless ?bind=0"),
    "synthetic": SourceKind("synthetic:", SyntheticSource.from_spec, "?fps=30&label=b_lines&seed=3&frames=N&size=224"),
}


def spec_usage(sep: str = " | ") -> str:
    """The spec forms, e.g. ``video:PATH | probe:DEVICE|URL | ...`` (for help text)."""
    return sep.join(kind.form for kind in SOURCES.values())


SPEC_FORMS = ", ".join(f"{k.form} ({k.hint})" if k.hint else k.form for k in SOURCES.values())


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
    """Build the source a spec names (see :data:`SOURCES` for the forms).

    Args:
        spec: the source spec.
        name: stream id; default derived from the spec (file stem, ``probe0``, ``zmq-5555``,
            ``synthetic``).
        speed: replay speed factor (replayed sources).
        pacing: release replayed frames at their frame rate (False: as fast as possible).
        loop: restart a replayed file when it ends.
        gray: (H, W) gray frames, else (H, W, 3) RGB.
        size: output size, int (square) or (width, height); None keeps the source's. A
            ``synthetic:?size=N`` spec overrides it (the size the clips are generated at).
        options: source-specific options, as in the spec's query string.

    Raises:
        SourceError: unknown scheme (the message lists the valid forms), bad or unknown option.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise SourceError(f"source spec {spec!r} has no scheme; valid forms: {SPEC_FORMS}")
    kind = SOURCES.get(spec.partition(":")[0])
    if kind is None:
        raise SourceError(f"unknown source spec {spec!r}; valid forms: {SPEC_FORMS}")
    return kind.from_spec(spec, name=name, speed=speed, pacing=pacing, loop=loop, gray=gray, size=size, **options)
