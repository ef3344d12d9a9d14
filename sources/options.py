"""Helpers for a source's ``from_spec``: typed options, query strings, replay-only settings.

A source kind's ``from_spec(spec, *, name, speed, pacing, loop, gray, size, **options)`` reads
its part of the spec and its options with these, so every kind reports a bad option the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from core.errors import SourceError

Converter = Callable[[Any], Any]


def boolean(value: Any) -> bool:
    """1/0, true/false, yes/no, on/off (or a bool) as a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (use 1/0, true/false)")


def names(value: Any) -> tuple[str, ...]:
    """A comma-separated list (or a sequence) of names."""
    return tuple(v.strip() for v in value.split(",")) if isinstance(value, str) else tuple(value)


def optional_int(value: Any) -> int | None:
    """An integer, or None for ``none``."""
    return None if value is None or str(value).lower() == "none" else int(value)


def typed(spec: str, given: Mapping[str, Any], table: Mapping[str, Converter]) -> dict[str, Any]:
    """Check option names against ``table`` and convert their values (SourceError naming the option)."""
    out = {}
    for key, value in given.items():
        if key not in table:
            valid = ", ".join(table) or "none"
            raise SourceError(f"unknown option {key!r} for source {spec!r}; valid options: {valid}")
        try:
            out[key] = table[key](value)
        except (TypeError, ValueError) as exc:
            raise SourceError(f"bad value {value!r} for option {key!r} of source {spec!r}: {exc}") from None
    return out


def merge_query(spec: str, query: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's query-string options plus the keyword ones; an option given both ways is an error."""
    merged = dict(options)
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in merged:
            raise SourceError(
                f"option {key!r} is given twice for source {spec!r} (in the spec and as a keyword); keep one"
            )
        merged[key] = value
    return merged


def live_only(spec: str, speed: float, pacing: bool, loop: bool) -> None:
    """SourceError when replay settings (speed, no pacing, loop) are given to a live source."""
    if speed != 1.0 or not pacing or loop:
        raise SourceError(
            f"speed, no-pacing and loop apply to replayed sources (video:, dicom:, synthetic:), not to the live source {spec!r}"
        )
