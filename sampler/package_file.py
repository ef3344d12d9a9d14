"""The model package file: one zip of a JSON card and ONNX graphs (see :mod:`sampler.package`).

Reading and writing it needs neither torch nor ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

from core.errors import ModelFileError

PACKAGE_FORMAT = "das-stream-package"
PACKAGE_VERSION = 1
SUFFIX = ".dasp"
CARD = "card.json"
ORDER_RULES = ("scores", "segments", "logits", "uniform", "random", "all")


def _source(path: str | os.PathLike | bytes) -> Path | io.BytesIO:
    return io.BytesIO(path) if isinstance(path, bytes) else Path(path)


def is_package(path: str | os.PathLike | bytes) -> bool:
    """Whether ``path`` (or a file's bytes) is a model package (a zip with a card), not a torch model file."""
    source = _source(path)
    if (isinstance(source, Path) and not source.is_file()) or not zipfile.is_zipfile(source):
        return False
    with zipfile.ZipFile(source) as z:
        return CARD in z.namelist()


def write_package(path: str | os.PathLike, card: dict[str, Any], graphs: dict[str, bytes]) -> Path:
    """Write a package file: the card and the graphs, stored (ONNX weights do not compress)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    card = {**card, "graphs": {name: f"{name}.onnx" for name in graphs}}
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        z.writestr(CARD, json.dumps(card, indent=2, sort_keys=False) + "\n")
        for name, data in graphs.items():
            z.writestr(f"{name}.onnx", data)
    tmp.replace(path)  # a reader never sees half a package
    return path


def read_package(path: str | os.PathLike | bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The card and graphs of a package (a path, or a file's bytes shipped to a cluster node);
    ModelFileError naming the file and the fix otherwise."""
    source = _source(path)
    if isinstance(path, bytes):
        path = "(shipped bytes)"
    elif not Path(path).is_file():
        raise ModelFileError(
            f"model package {path} does not exist; check the path or export one with `das-stream export`"
        )
    try:
        with zipfile.ZipFile(source) as z:
            card = json.loads(z.read(CARD))
            graphs = {name: z.read(file) for name, file in (card.get("graphs") or {}).items()}
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ModelFileError(
            f"model package {path} is damaged or not a package ({type(exc).__name__}: {exc}); re-copy or re-export it"
        ) from None
    if card.get("format") != PACKAGE_FORMAT:
        raise ModelFileError(
            f"{path} is a zip file but not a das-stream model package; export one with `das-stream export`"
        )
    if card.get("version") != PACKAGE_VERSION:
        raise ModelFileError(
            f"model package {path} has version {card.get('version')!r}, this das-stream reads version {PACKAGE_VERSION}; "
            "re-export it with this release"
        )
    missing = [name for name in ("backbone", "head") if name not in graphs]
    rule = (card.get("sampler") or {}).get("order")
    if rule not in ORDER_RULES:
        missing.append(f"a known order rule (got {rule!r})")
    if rule in ("scores", "segments") and "scores" not in graphs:
        missing.append("scores")
    if missing:
        raise ModelFileError(f"model package {path} lacks {', '.join(missing)}; re-export it with this release")
    return card, graphs


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
