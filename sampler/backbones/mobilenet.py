"""MobileNetV3-Small (the DAS paper's backbone): torchvision's ``features``, 576-d, with
torchvision's ImageNet weights from the torch hub cache (downloaded only for ``weights="imagenet"``).

A weights file may be torchvision's whole ``mobilenet_v3_small`` state dict or just its
``features``, e.g. torchvision's own ``mobilenet_v3_small-047dcff4.pth`` copied by hand.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small

from core.errors import SamplerError

from ..model_file import read_state_dict

log = logging.getLogger(__name__)

FEATURE_DIM = 576  # channels of mobilenet_v3_small(...).features
_IMAGENET = MobileNet_V3_Small_Weights.IMAGENET1K_V1


def features() -> nn.Module:
    """torchvision's ``mobilenet_v3_small().features``, random weights."""
    return mobilenet_v3_small(weights=None).features


def imagenet_cache_path() -> Path:
    """Where torchvision keeps (or would download) the ImageNet weights of MobileNetV3-Small."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_IMAGENET.url)


def _how_to_get_weights() -> str:
    return (
        f"download {_IMAGENET.url} into {imagenet_cache_path().parent} (or set TORCH_HOME), "
        "or set model.backbone_weights: PATH (weights=PATH in Python) to a MobileNetV3-Small state_dict, "
        "or model.backbone_weights: none for random init"
    )


def imagenet_state(download: bool) -> dict[str, torch.Tensor] | None:
    """The ImageNet weights: from the cache, else downloaded when ``download``, else None (logged)."""
    cached = imagenet_cache_path()
    if cached.is_file():
        return read_state_dict(cached, "MobileNetV3-Small ImageNet weights")
    if not download:
        log.warning(
            "no ImageNet weights for MobileNetV3-Small in the torch hub cache; the backbone starts from random init. "
            "To use them: %s",
            _how_to_get_weights(),
        )
        return None
    try:
        return _IMAGENET.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # network errors come in many types
        raise SamplerError(
            f"cannot download the ImageNet weights of MobileNetV3-Small ({exc}); {_how_to_get_weights()}"
        ) from exc


def adapt(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The whole network's state dict (or the features') -> the features' keys."""
    return {key.removeprefix("features."): value for key, value in state.items() if not key.startswith("classifier.")}
