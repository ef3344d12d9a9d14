"""The one device rule, shared by training and the torch engines."""

from __future__ import annotations

import torch

from core.errors import EngineError
from core.settings import DEVICE_FORMS, is_device_name


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``; ``cuda`` or ``cuda:N``.

    Raises:
        EngineError: an unknown form, or CUDA asked for where torch sees no GPU (or not that
            many GPUs); the message names the fix.
    """
    if not is_device_name(device):
        raise EngineError(f"unknown device {device!r}; use {DEVICE_FORMS}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EngineError(f"device {device!r} requested but torch sees no CUDA GPU; use --device cpu or auto")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise EngineError(
                f"device {device!r} requested but torch sees {torch.cuda.device_count()} CUDA GPU(s); "
                f"use cuda:0..cuda:{torch.cuda.device_count() - 1} or auto"
            )
    return torch.device(device)
