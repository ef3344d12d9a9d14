"""The one schema of das-stream's messages (JSON Schema, draft 2020-12), and the one check every
consumer runs before it trusts a payload.

``check(kind, payload)`` refuses, with a one-line reason that never repeats the sender's text at
length: a payload over ``MAX_PAYLOAD_BYTES``, anything but strict UTF-8 JSON (no NaN/Infinity),
and any value outside :data:`PREDICTION` / :data:`STATS`: wrong types (a float or a bool where
an integer belongs: ``"window": 1.5``, ``"window": true``), numbers out of range (a negative
window, a window of 10**12), text too long (a 10 MB label) or a stream id that is not one.
``das-stream subscribe`` runs it on every message and counts what it refuses; other consumers
can validate against the same schema, published in docs/mqtt.md (a test keeps the two equal).

Text that passes is still the sender's: print it with :func:`sinks.console.printable`, which
escapes terminal controls (ANSI escapes, BEL, CR/LF).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jsonschema

from sinks.messages import Prediction, Stats

MAX_PAYLOAD_BYTES = 256 * 2**10  # a prediction is about 400 bytes, stats about 600
MAX_SEQ = 2**53 - 1  # the largest integer every JSON reader holds exactly
MAX_WINDOW = 2**31 - 1


def _required(record: type) -> list[str]:
    """The fields of a record without a default: every message carries them (later ones may not)."""
    return [
        f.name
        for f in dataclasses.fields(record)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


_COUNT = {"type": "integer", "minimum": 0, "maximum": MAX_SEQ}
_TIME = {"type": ["number", "null"], "minimum": 0, "maximum": 1e11}  # seconds since the epoch
_MS = {"type": ["number", "null"], "minimum": -1e12, "maximum": 1e12}
_NAME = {"type": "string", "minLength": 1, "maxLength": 200}
_VERSION = {"type": "integer", "minimum": 1, "maximum": 1000}  # later versions only add fields

PREDICTION: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "das-stream/prediction",
    "title": "das-stream prediction",
    "type": "object",
    "required": _required(Prediction),
    "properties": {
        "type": {"const": "prediction"},
        "schema": _VERSION,
        "stream": {**_NAME, "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$"},
        "window": {"type": "integer", "minimum": 0, "maximum": MAX_WINDOW},
        "first_seq": _COUNT,
        "last_seq": _COUNT,
        "t_first": _TIME,
        "t_last": _TIME,
        "selected": {"type": "array", "maxItems": 4096, "items": _COUNT},
        "probs": {
            "type": "object",
            "maxProperties": 1000,
            "propertyNames": {"maxLength": 200},
            "additionalProperties": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        },
        "label": _NAME,
        "model": {"type": "string", "maxLength": 500},
        "latency_ms": _MS,
        "padded": {"type": "integer", "minimum": 0, "maximum": 4096},
        "gap_before": {"type": "boolean"},
        "gap_ms": {"type": ["number", "null"], "minimum": 0, "maximum": 1e12},
        "segment": {"type": ["string", "null"], "maxLength": 1024},
        "instance": {"type": ["string", "null"], "maxLength": 64},
        "frames_used": {"type": "integer", "minimum": 0, "maximum": 4096},
        "exit": {"enum": ["confident", "k_max", "budget"]},
        "k_max": {"type": "integer", "minimum": 0, "maximum": 4096},
    },
}

STATS: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "das-stream/stats",
    "title": "das-stream stats",
    "type": "object",
    "required": _required(Stats),
    "properties": {
        "type": {"const": "stats"},
        "schema": _VERSION,
        "stream": PREDICTION["properties"]["stream"],
        "frames_in": _COUNT,
        "frames_forwarded": _COUNT,
        "frames_skipped": _COUNT,
        "frames_dropped": _COUNT,
        "frames_pending": _COUNT,
        "frames_resampled_out": _COUNT,
        "bad_messages": _COUNT,
        "windows": _COUNT,
        "fps_in": {"type": ["number", "null"], "minimum": 0, "maximum": 1e6},
        "latency_ms": {
            "type": "object",
            "maxProperties": 16,
            "propertyNames": {"maxLength": 20},
            "additionalProperties": _MS,
        },
        "compute_saved": {"type": ["number", "null"], "minimum": -1e6, "maximum": 1},
        "final": {"type": "boolean"},
        "extra": {"type": "object", "maxProperties": 256, "propertyNames": {"maxLength": 200}},
    },
}

SCHEMAS = {"prediction": PREDICTION, "stats": STATS}

# JSON Schema counts 1.0 as an integer; a window or a seq must be a JSON integer, written without
# a fraction, as das-stream writes it (1.0 would crash range() and print as "#1.0").
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
)
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)
_VALIDATORS = {kind: _Validator(schema) for kind, schema in SCHEMAS.items()}


class Refused(ValueError):
    """A payload that is not a valid das-stream message; the text says why, in one short line."""


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse(payload: bytes) -> Any:
    """The JSON value of a payload, strictly (UTF-8, no NaN/Infinity, within the size limit)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Refused(f"payload of {len(payload)} bytes is over the limit of {MAX_PAYLOAD_BYTES}")
    try:
        return json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(f"not UTF-8 JSON ({str(exc)[:80]})") from None
    except (ValueError, RecursionError) as exc:
        raise Refused(f"not strict JSON ({str(exc)[:80]})") from None


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path)


def _reason(error: jsonschema.ValidationError) -> str:
    """What is wrong, without the sender's value at length (a 10 MB label stays out)."""
    keyword, expected = error.validator, error.validator_value
    value = error.instance
    shown = repr(value) if not isinstance(value, (str, list, dict)) else f"a {type(value).__name__}"
    if keyword == "type":
        return f"must be of type {expected}, got {shown[:40]}"
    if keyword in ("minimum", "maximum"):
        return f"must be {'>=' if keyword == 'minimum' else '<='} {expected}, got {shown[:40]}"
    if keyword in ("maxLength", "minLength", "maxItems", "maxProperties"):
        size = len(value) if isinstance(value, (str, list, dict)) else "?"
        return f"{keyword} is {expected}, got {size}"
    if keyword == "required":
        missing = [k for k in expected if isinstance(value, dict) and k not in value]
        return f"missing {', '.join(missing)}"
    if keyword == "pattern":
        return "is not a stream id (letters, digits, '.', '_', '-')"
    if keyword == "const":
        return f"must be {expected!r}"
    return f"fails {keyword}"


def check(kind: str, payload: bytes) -> dict[str, Any]:
    """The message a ``kind`` ("prediction" or "stats") payload holds, once valid.

    Raises:
        Refused: over the size limit, not strict JSON, or not valid against the schema (the
            first error found, one line).
    """
    data = parse(payload)
    validator = _VALIDATORS[kind]
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where, reason = _where(error), _reason(error)
        raise Refused(reason if error.validator == "required" and not where else f"{where or 'the message'} {reason}")
    return data


__all__ = ["MAX_PAYLOAD_BYTES", "PREDICTION", "SCHEMAS", "STATS", "Refused", "check", "parse"]
