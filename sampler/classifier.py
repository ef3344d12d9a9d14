"""The downstream classifier of the DAS paper: per-frame CNN backbone, attention pooling, MLP.

The backbones (``backbone=``) and their weights are records of :data:`sampler.backbones.BACKBONES`:
``"mobilenet_v3_small"`` (the paper's, 576-d embeddings), ``"tiny_cnn"`` (128-d, no pretrained
weights; quick CPU experiments and tests) and ``"efficientnet_lite0"`` (1280-d).

The per-frame embedding (:meth:`FrameClassifier.embed`) and the pooling + head
(:meth:`FrameClassifier.classify`) are separate calls so that a streaming runtime can embed each
frame once and reuse the embedding in every overlapping window that picks it.

The module itself does no I/O; :func:`frame_classifier` builds one and loads its backbone
weights (as torchvision's ``mobilenet_v3_small(weights=...)`` does): ``"none"``, ``"auto"``,
``"imagenet"`` or a path (see :mod:`sampler.backbones`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import SamplerError

from .backbones import backbone as backbone_record
from .features import as_float_window

MIN_INPUT_SIZE = 16  # the smallest frame side the backbones take
CLASSIFIER_OPTIONS = ("embed_dim", "hidden", "dropout")  # FrameClassifier's own options


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
        input_size: side of the square frames the backbone sees (frames are resized to it);
            0 takes the backbone's own (``Backbone.input_size``).
        backbone: a name of :data:`sampler.backbones.BACKBONES`.
        embed_dim: embedding size E; None keeps the backbone's own (576 for MobileNetV3-Small),
            another value adds a linear projection.
        hidden: width of the attention layer and of the MLP's hidden layer.
        dropout: dropout before the MLP's last layer.
    """

    mean: torch.Tensor  # buffers: the backbone's input normalisation
    std: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        *,
        input_size: int = 0,
        backbone: str = "mobilenet_v3_small",
        embed_dim: int | None = None,
        hidden: int = 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise SamplerError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
        spec = backbone_record(backbone)
        input_size = int(input_size) or spec.input_size
        if input_size < MIN_INPUT_SIZE:
            raise SamplerError(f"input_size must be at least {MIN_INPUT_SIZE} pixels, got {input_size}")
        self.num_classes = int(num_classes)
        self.input_size = input_size
        self.backbone_name = backbone
        self.backbone = spec.build()
        self.weights_source = "none"  # what the backbone holds; set by frame_classifier
        embed_dim = spec.dim if embed_dim is None else int(embed_dim)
        self.project = nn.Identity() if embed_dim == spec.dim else nn.Linear(spec.dim, embed_dim)
        self.embed_dim = embed_dim
        self.pool = AttentionPool(embed_dim, hidden)
        self.head = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 or float [0, 1], C in {1, 3} -> (N, 3, S, S), normalised as the backbone expects.

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
        weights: backbone weights: ``"none"``, ``"auto"``, ``"imagenet"`` or a path (see
            :mod:`sampler.backbones`); ``weights_source`` of the result says what was loaded.
        **options: the rest of FrameClassifier's arguments (input_size, backbone, embed_dim,
            hidden, dropout).
    """
    model = FrameClassifier(num_classes, **options)
    model.weights_source = backbone_record(model.backbone_name).load_weights(model.backbone, weights)
    return model
