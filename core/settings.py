"""The rules every settings object shares: reading a YAML mapping and checking values against
type hints.

Used by ``training.config`` (experiments) and ``streamer.config`` (``das-stream run``), so ``1e-4``
is a number, ``cuda:1`` a device name and a ``Literal`` a closed choice in both. No torch.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from .errors import ConfigError

DEVICE_FORMS = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclasses.dataclass(frozen=True)
class OneOf:
    """A closed choice whose names live in a registry: ``engine: Annotated[str, OneOf(BACKENDS)]``
    (a ``Literal`` would write the registry's names a second time)."""

    names: tuple[str, ...]


def choices_of(cls: type, key: str) -> tuple[Any, ...]:
    """The values the field ``key`` of the settings class ``cls`` may take (its ``Literal`` or
    :class:`OneOf`), e.g. for a flag's ``choices``; () when it is not a closed choice."""
    hint = typing.get_type_hints(cls, include_extras=True)[key]
    if typing.get_origin(hint) is Annotated:
        return next((m.names for m in typing.get_args(hint)[1:] if isinstance(m, OneOf)), ())
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def read_yaml(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    """The mapping a YAML file holds ({} for an empty file), or ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"{what} {p} not found (the file does not exist); pass an existing YAML file, examples are in configs/"
        )
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(
            f"{what} {p} is not a text (UTF-8) YAML file (a binary file?); pass a YAML file, examples are in configs/"
        ) from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise ConfigError(f"{what} {p} is not valid YAML ({first}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} {p} must hold a mapping of keys to values, got {type(data).__name__}")
    return dict(data)


def parse_scalar(text: str) -> Any:
    """A flag's text read as YAML (numbers, booleans, lists, null); plain text if it is not YAML."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text.strip()


def coerce(value: Any, hint: Any, key: str, *, context: str = "") -> Any:
    """Check ``value`` against a field's type hint and return it in that type.

    Rules (the same for every config): ``X | None`` accepts None; ``Literal[...]`` (or
    ``Annotated[str, OneOf(names)]``) one of its
    values; ``tuple[X, ...]`` a list or tuple, a single value, or a comma-separated string
    (``0,1,2`` from a flag); ``Mapping`` a mapping; ``bool`` only
    true/false; ``int`` only integers; ``float`` numbers and numeric text (YAML 1.1 reads
    ``1e-4`` as text); ``str`` text or a number.

    Args:
        value: the value as read from YAML or a flag.
        hint: the field's type hint.
        key: the key's name as the message should show it.
        context: appended to the message, e.g. `` (in configs/x.yaml)``.

    Raises:
        ConfigError: ``"<key> must be <what>, got <value><context>"``, one line.
    """

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{key} must be {expected}, got {value!r}{context}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        value = coerce(value, args[0], key, context=context)
        for names in (m.names for m in args[1:] if isinstance(m, OneOf)):
            if value not in names:
                raise bad("one of " + ", ".join(repr(n) for n in names))
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported config type {hint!r} for {key}")  # a programming error
        return coerce(value, inner[0], key, context=context)
    if origin is Literal:
        if value not in args or (isinstance(value, bool) and not any(a is value for a in args)):
            raise bad("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin is tuple:
        if isinstance(value, str):  # "a,b" from a flag
            value = [parse_scalar(v) for v in value.split(",") if v.strip()]
        elif not isinstance(value, (list, tuple)):  # a single value, e.g. --seeds 0
            value = [value]
        return tuple(coerce(v, args[0], key, context=context) for v in value)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        if not isinstance(value, Mapping):
            raise bad("a mapping")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise bad("a string")
        return str(value)
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a programming error


def coerce_fields(obj: Any, key: typing.Callable[[str], str] = str, *, context: str = "") -> None:
    """Coerce every public field of the frozen dataclass ``obj`` in place (call from __post_init__)."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        if not f.name.startswith("_"):
            object.__setattr__(obj, f.name, coerce(getattr(obj, f.name), hints[f.name], key(f.name), context=context))


def load_flat(cls: type, path: str | Path | None, overrides: Mapping[str, Any] | None) -> Any:
    """A flat config (``RunConfig``, ``ClusterConfig``): an optional YAML file whose keys must be
    the class' public fields, then the non-None ``overrides`` (the flags), built as
    ``cls(**values, _origin=where they came from)``."""
    values: dict[str, Any] = {}
    origin = "the command line"
    if path is not None:
        values = read_yaml(path)
        origin = str(path)
        keys = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
        unknown = sorted(set(values) - set(keys))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in {path}; valid keys: {', '.join(keys)}")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return cls(**values, _origin=origin)


def defaults(cls: type) -> dict[str, Any]:
    """``{field: default}`` of a dataclass (fields without a plain default are left out)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def is_device_name(device: str) -> bool:
    """Whether ``device`` is a form :func:`resolve_device` accepts (checked without touching CUDA)."""
    return isinstance(device, str) and _DEVICE.fullmatch(device) is not None
