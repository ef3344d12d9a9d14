"""The model file and the backbone weight files: the one module that reads and writes them.

A model file is ``torch.save`` of a plain dict, readable with ``torch.load(weights_only=True)``::

    {"format": "das-stream-model", "version": 2, "config": ModelConfig.to_dict(), "state_dict": ...,
     "meta": {...}}

``meta`` (optional; files written before it existed load with ``{}``) holds plain values:
``preprocessing`` (what training did to every clip: ``fps``, ``size``, ``gray``, ``crop``,
``num_frames``, ``long_videos``, ``kind``; ``fps`` is None for volumes), ``training`` (the data
fingerprint, clip counts, the backbone weights requested and used), ``metrics``, ``versions`` and
``created``. ``das-stream info`` prints it; ``run`` applies ``preprocessing``.

Versions (a file of an older version is upgraded as it is read, so every file ever written loads):

- 1: the config names the option mappings ``sampler_kwargs`` and ``classifier_kwargs``; a DAS
  sampler's base-score MLP ends in a bias (``sampler.base.2.bias``) that cannot learn (a constant
  added to every frame's score cancels in the softmax over the frames), dropped on reading.
- 2: the option mappings are ``sampler`` and ``classifier`` (the keys of a training config's
  ``model`` section); DAS has no such bias.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.errors import ModelFileError

FORMAT = "das-stream-model"
VERSION = 2

_HOW_TO_WRITE = "pass a model written by `das-stream train` or SampledClassifier.save"
_RENAMED_IN_2 = {"sampler_kwargs": "sampler", "classifier_kwargs": "classifier"}
_INERT_IN_2 = {"das": ("sampler.base.2.bias",)}  # method -> state dict keys version 2 dropped


@dataclass(frozen=True)
class ModelFile:
    """What a model file holds, upgraded to the current version.

    Attributes:
        config: the model's configuration as plain values (``ModelConfig.from_dict`` reads it).
        state_dict: the weights.
        meta: plain values saved with the model (see the module docstring).
    """

    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


def write_model_file(path: str | os.PathLike, contents: ModelFile) -> None:
    """Write ``contents`` to ``path`` atomically (an interrupted write leaves any old file intact)."""
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "config": contents.config,
        "state_dict": {key: value.detach().cpu() for key, value in contents.state_dict.items()},
    }
    if contents.meta:
        payload["meta"] = contents.meta
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_model_file(source: str | os.PathLike | bytes, map_location: str | torch.device = "cpu") -> ModelFile:
    """Read a model file (a path, or the file's bytes as shipped to a cluster's replicas).

    Raises:
        ModelFileError: a one-line message naming the file and what to do, for a missing,
            truncated, foreign or future file.
    """
    opened: Path | io.BytesIO
    if isinstance(source, bytes):
        name, head, opened = "(bytes)", source[:4], io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ModelFileError(f"model file {path} does not exist; check the path or train a model first")
        with path.open("rb") as file:
            head = file.read(4)
        name, opened = str(path), path
    payload = _load(name, head, opened, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(
            f"model file {name} is a PyTorch file but not a das-stream model; "
            "pass a file written by SampledClassifier.save"
        )
    version = payload.get("version")
    if version not in (1, VERSION):
        raise ModelFileError(
            f"model file {name} has format version {version!r}, this das-stream reads versions 1 to {VERSION}; "
            "use the das-stream release that wrote it or re-export the model"
        )
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise ModelFileError(f"model file {name} has no config or no weights; re-save it with SampledClassifier.save")
    if version == 1:
        config, state = _upgrade_from_1(config, state)
    return ModelFile(config=config, state_dict=state, meta=dict(payload.get("meta") or {}))


def _load(name: str, head: bytes, opened: Path | io.BytesIO, map_location: str | torch.device) -> Any:
    zipped = head.startswith(b"PK\x03\x04")  # torch.save's format since PyTorch 1.6
    if head and not zipped and not head.startswith(b"\x80"):  # neither a zip nor a pickle
        raise ModelFileError(
            f"model file {name} is not a das-stream model file (not a PyTorch file at all); {_HOW_TO_WRITE}"
        )
    try:
        return torch.load(opened, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not zipped:
            raise ModelFileError(
                f"model file {name} is not a das-stream model file (unreadable legacy pickle); {_HOW_TO_WRITE}"
            ) from exc
        raise ModelFileError(
            f"model file {name} is not a das-stream model (it holds Python objects, not plain weights); "
            "save models with SampledClassifier.save"
        ) from exc
    except Exception as exc:  # truncated zip, empty file, not a torch file at all
        raise ModelFileError(
            f"model file {name} is truncated or not a PyTorch file ({type(exc).__name__}: {exc}); re-save or re-copy it"
        ) from exc


def _upgrade_from_1(config: dict[str, Any], state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    config = {_RENAMED_IN_2.get(key, key): value for key, value in config.items()}
    inert = _INERT_IN_2.get(config.get("method", ""), ())
    return config, {key: value for key, value in state.items() if key not in inert}


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """A ``state_dict`` file (backbone weights), read with ``weights_only=True``.

    Args:
        path: the file.
        what: what the weights are for, e.g. "backbone weights" (it starts every message).

    Raises:
        ModelFileError: naming the file, when it is missing, unreadable or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} file {path} does not exist; check the path or use weights='none'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ModelFileError(
            f"{what} file {path} cannot be read as a PyTorch state_dict ({type(exc).__name__}); "
            "re-download it or pass another file"
        ) from exc
    if not isinstance(state, dict):
        raise ModelFileError(
            f"{what} file {path} does not hold a state_dict; save one with torch.save(model.state_dict(), path)"
        )
    return state
