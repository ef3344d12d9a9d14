"""Gumbel noise, selection without replacement, and the straight-through estimator.

All learned samplers end the same way: k rows of logits over T frames become k one-hot rows
(the forward pass) whose gradient is that of a softmax relaxation (the backward pass). The
helpers here are that shared ending.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .output import SamplerOutput

INVALID_PENALTY = 1e4
"""Subtracted from the (temperature-scaled) logits of invalid frames: they lose against every
valid frame but keep their order among themselves, so they are picked only when fewer than k
valid frames exist."""


def gumbel_like(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel(0, 1) noise with the shape, dtype and device of ``logits``."""
    uniform = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    tiny = torch.finfo(logits.dtype).tiny
    return -torch.log(-torch.log(uniform.clamp(tiny, 1.0 - 1e-7)))


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """``hard`` in the forward pass, the gradient of ``soft`` in the backward pass."""
    return hard + soft - soft.detach()


def _one_hot_rows(scaled_logits: torch.Tensor, index: torch.Tensor, *, dim: int) -> torch.Tensor:
    """One-hot rows at ``index``, straight-through the softmax of ``scaled_logits`` over ``dim``.

    Without autograd (inference) the softmax is skipped and the rows are exactly one-hot.
    """
    hard = torch.zeros_like(scaled_logits).scatter_(dim, index.unsqueeze(dim), 1.0)
    if not scaled_logits.requires_grad:
        return hard
    return straight_through(hard, F.softmax(scaled_logits, dim=dim))


def penalize_invalid(scaled_logits: torch.Tensor, invalid: torch.Tensor) -> torch.Tensor:
    """Push the logits (..., T) of invalid frames (B, T) below every valid one."""
    while invalid.dim() < scaled_logits.dim():
        invalid = invalid.unsqueeze(1)
    return scaled_logits - INVALID_PENALTY * invalid.to(scaled_logits.dtype)


def select_row(scaled_logits: torch.Tensor, taken: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One pick over T frames: the argmax of the logits with the ``taken`` frames excluded.

    Args:
        scaled_logits: (B, T) logits already divided by the temperature (noise and invalid
            penalty included).
        taken: (B, T) bool, frames picked by earlier rows, or None.

    Returns:
        (row, index): the straight-through one-hot row (B, T) and the picked index (B,).
    """
    if taken is not None:
        scaled_logits = scaled_logits.masked_fill(taken, float("-inf"))
    index = scaled_logits.argmax(dim=1)
    return _one_hot_rows(scaled_logits, index, dim=1), index


def select_without_replacement(scaled_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k distinct picks from k rows of logits (B, k, T): row j excludes the picks of rows < j.

    This is the top-k relaxation of DPS (Huijben et al. 2020): when all rows are equal it
    returns the top-k frames, row j's softmax masking the j frames ranked above it.

    Returns:
        (matrix (B, k, T) straight-through, indices (B, k)) in pick order.
    """
    b, k, t = scaled_logits.shape
    taken = torch.zeros(b, t, dtype=torch.bool, device=scaled_logits.device)
    rows, picks = [], []
    for j in range(k):
        row, index = select_row(scaled_logits[:, j], taken)
        taken = taken.scatter(1, index.unsqueeze(1), torch.ones_like(taken[:, :1]))  # a tensor src: exportable to ONNX
        rows.append(row)
        picks.append(index)
    return torch.stack(rows, dim=1), torch.stack(picks, dim=1)


def select_independent(scaled_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One argmax per row of (B, k, T), rows independent (picks may repeat).

    Returns:
        (matrix (B, k, T) straight-through, indices (B, k)) in row order.
    """
    indices = scaled_logits.argmax(dim=2)
    return _one_hot_rows(scaled_logits, indices, dim=2), indices


def in_temporal_order(matrix: torch.Tensor, indices: torch.Tensor) -> SamplerOutput:
    """Sort the picks ascending and reorder the rows of ``matrix`` (B, k, T) to match."""
    indices, order = indices.sort(dim=1, stable=True)
    matrix = matrix.gather(1, order.unsqueeze(2).expand_as(matrix))
    return SamplerOutput(matrix=matrix, indices=indices)


def top_k_priority(priority: torch.Tensor, k: int) -> SamplerOutput:
    """The k frames of highest ``priority`` (B, T), as a hard sampling matrix in temporal order.

    Ties go to the earlier frame (as the row-by-row argmax of ``select_without_replacement``).
    """
    indices = priority.argsort(dim=1, descending=True, stable=True)[:, :k].sort(dim=1).values
    matrix = torch.zeros(*indices.shape, priority.shape[1], device=priority.device).scatter_(
        2, indices.unsqueeze(2), 1.0
    )
    return SamplerOutput(matrix=matrix, indices=indices)
