"""The interface every sampler shares.

A sampler is an ``nn.Module`` built as ``Sampler(num_frames=T, k=k, ...)``. ``forward(x, valid)``
takes a window ``x`` of shape (B, T, C, H, W) and returns a :class:`SamplerOutput`.
``select(x, valid)`` does the same without gathering the frames, so a streaming runtime can pass
a small (feature-resolution) copy of the window and gather the full-resolution frames itself.
"""

from __future__ import annotations

import torch
from torch import nn

from core.errors import SamplerError

from .gumbel import gumbel_like
from .output import SamplerOutput


def check_window(x: torch.Tensor, num_frames: int, valid: torch.Tensor | None = None) -> None:
    """Raise SamplerError with a clear message when ``x``/``valid`` do not fit a sampler of T frames."""
    if not isinstance(x, torch.Tensor):
        raise SamplerError(f"window must be a torch.Tensor of shape (B, T, C, H, W), got {type(x).__name__}")
    if x.dim() != 5:
        raise SamplerError(
            f"window must have shape (B, T, C, H, W) (rank 5), got rank {x.dim()} {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0) or a channel dimension with x.unsqueeze(2)"
        )
    if x.shape[1] != num_frames:
        raise SamplerError(
            f"window has T={x.shape[1]} frames but the sampler was built for num_frames={num_frames}; "
            "pad or cut the window to that length (pass valid= for padded frames)"
        )
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise SamplerError("window contains NaN or infinite values; clean the frames before sampling")
    if valid is not None:
        if valid.shape != x.shape[:2]:
            raise SamplerError(f"valid mask must have shape (B, T)={tuple(x.shape[:2])}, got {tuple(valid.shape)}")


def check_k(num_frames: int, k: int) -> None:
    """The rule for k every sampler shares: 1 <= k <= T (SamplerError otherwise)."""
    if num_frames < 1:
        raise SamplerError(f"num_frames must be >= 1, got {num_frames}")
    if not 1 <= k <= num_frames:
        raise SamplerError(
            f"k must be between 1 and num_frames={num_frames}, got k={k}; lower k or lengthen the window"
        )


class Sampler(nn.Module):
    """Base class: subclasses implement ``select``; ``forward`` adds the gathered frames.

    ``noise_scale`` multiplies the Gumbel noise that the learned samplers (DPS, ADPS, DAS) add in
    training mode: 1.0 (the default) is the standard Gumbel-max exploration, 0.0 makes the
    training picks the inference picks (the gradient still flows through the relaxation). The
    trainer scales it down over epochs with ``train.explore_epochs`` and puts it back after
    training; it is not saved with the model.
    """

    def __init__(self, num_frames: int, k: int) -> None:
        super().__init__()
        type(self).check_k(num_frames, k)
        self.num_frames = int(num_frames)
        self.k = int(k)
        self.noise_scale = 1.0

    def explore(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` plus ``noise_scale`` x Gumbel noise in training mode; unchanged otherwise."""
        if not self.training or self.noise_scale == 0.0:
            return logits
        return logits + self.noise_scale * gumbel_like(logits)

    @staticmethod
    def check_k(num_frames: int, k: int) -> None:
        """Raise SamplerError when this sampler cannot pick ``k`` of ``num_frames`` frames
        (``ModelConfig`` asks the sampler's class, so each rule is written once)."""
        check_k(num_frames, k)

    def select(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> SamplerOutput:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> SamplerOutput:
        out = self.select(x, valid)
        frames = out.pick(x if x.is_floating_point() else x.float().div_(255.0))
        return SamplerOutput(matrix=out.matrix, indices=out.indices, frames=frames)
