"""What a sampler returns: :class:`SamplerOutput`."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplerOutput:
    """What a sampler picked.

    Attributes:
        matrix: (B, k, T) float sampling matrix. Rows are one-hot in the forward pass; in
            training its gradient is the soft relaxation's (straight-through).
        indices: (B, k) long, the picked frame positions, sorted ascending. Rows of ``matrix``
            are in the same order, so ``frames[:, j] == x[b, indices[b, j]]``.
        frames: (B, k, C, H, W) = matrix @ x, or None when produced by ``select``.
    """

    matrix: torch.Tensor
    indices: torch.Tensor
    frames: torch.Tensor | None = None

    def pick(self, values: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) per-frame values (frames, embeddings) -> (B, k, ...) of the picked frames.

        With a gradient to carry it is P @ values (the hard rows pick, the soft relaxation carries
        the gradient); otherwise the same rows by index, without the dense product.
        """
        if torch.is_grad_enabled() and self.matrix.requires_grad:
            return torch.einsum("bkt,bt...->bk...", self.matrix.to(values.dtype), values)
        return values[torch.arange(values.shape[0], device=values.device)[:, None], self.indices]
