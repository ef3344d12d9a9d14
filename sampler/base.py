"""The interface every sampler shares.

A sampler is an ``nn.Module`` built as ``Sampler(num_frames=T, k=k, ...)``. ``forward(x, valid)``
takes a window ``x`` of shape (B, T, C, H, W) and returns a :class:`SamplerOutput`.
``select(x, valid)`` does the same without gathering the frames, so a streaming runtime can pass
a small (feature-resolution) copy of the window and gather the full-resolution frames itself.
``select(x, valid, k=j)`` picks j <= k frames (training with ``train.k_schedule``).

``order(x, valid)`` (eval mode) is the sampler's best-first order of all T positions (usable
frames first, :mod:`core.order`): the order in which the runtime embeds frames when it stops as
soon as the prediction is settled. Its first j positions, sorted, are ``select(x, valid, k=j)``'s
picks in eval mode, for every j <= k.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from core.errors import SamplerError

from .gumbel import gumbel_like, top_k_priority
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

    ``keeps_all`` (a class attribute) is True for a sampler that keeps every frame whatever k it is
    asked for (Full): the one place that rule lives (:meth:`check_k`, :meth:`frames_to_keep`).
    """

    keeps_all: ClassVar[bool] = False
    label: ClassVar[str] = ""  # the name tables and plots show, e.g. "DAS"
    order_rule: str = "the sampler's picks"  # what order() ranks by, for model cards

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

    @classmethod
    def check_k(cls, num_frames: int, k: int) -> None:
        """Raise SamplerError when this sampler cannot pick ``k`` of ``num_frames`` frames
        (``ModelConfig`` asks the sampler's class, so each rule is written once)."""
        check_k(num_frames, num_frames if cls.keeps_all else k)
        if cls.keeps_all and k != num_frames:
            raise SamplerError(
                f"the {cls.__name__} keeps every frame, so k must equal num_frames={num_frames}, got k={k}; "
                f"set k equal to num_frames={num_frames}"
            )

    @classmethod
    def frames_to_keep(cls, num_frames: int, keep: float) -> int:
        """k for a keep ratio ``keep`` of ``num_frames``: ``round(keep * T)``, at least 1 and at
        most T; all T when the sampler keeps every frame."""
        return num_frames if cls.keeps_all else max(1, min(num_frames, round(keep * num_frames)))

    @classmethod
    def keep_ratio(cls, keep: float) -> float:
        """The keep ratio the sampler really uses when asked for ``keep`` (1 when it keeps all)."""
        return 1.0 if cls.keeps_all else keep

    def pick_count(self, k: int | None) -> int:
        """``k`` (None: the sampler's own k) after checking 1 <= k <= the sampler's k."""
        if k is None:
            return self.k
        if isinstance(k, bool) or not 1 <= int(k) <= self.k:
            raise SamplerError(f"k must be between 1 and the sampler's k={self.k}, got k={k}")
        return int(k)

    def select(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, k: int | None = None
    ) -> SamplerOutput:  # pragma: no cover
        raise NotImplementedError

    def order(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover
        """(B, T) long: the best-first order of the window's positions (see the module docstring)."""
        raise NotImplementedError

    @property
    def uses_frame_features(self) -> bool:
        """Whether the sampler sees the frames only through their per-frame features
        (:func:`sampler.features.frame_features`), so a streaming runtime may compute them as each
        frame arrives and call :meth:`select_features` / :meth:`order_features` at the window's
        close. False (the default): the runtime passes the frames to :meth:`select` / :meth:`order`."""
        return False

    def select_features(self, raw: torch.Tensor, usable: torch.Tensor, k: int | None = None) -> SamplerOutput:
        """:meth:`select` from the frames' precomputed features (B, T, d) and the usable mask
        (B, T); only for a sampler that :attr:`uses_frame_features`."""
        raise SamplerError(f"{type(self).__name__} needs the frames, not their features; call select(x)")

    def order_features(self, raw: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
        """:meth:`order` from the frames' precomputed features (as :meth:`select_features`)."""
        raise SamplerError(f"{type(self).__name__} needs the frames, not their features; call order(x)")

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None, k: int | None = None) -> SamplerOutput:
        out = self.select(x, valid, k)
        frames = out.pick(x if x.is_floating_point() else x.float().div_(255.0))
        return SamplerOutput(matrix=out.matrix, indices=out.indices, frames=frames)


def as_order(order, like: torch.Tensor) -> torch.Tensor:
    """A numpy order from :mod:`core.order` as a long tensor on ``like``'s device."""
    return torch.as_tensor(order, dtype=torch.long, device=like.device)


def prefix_picks(order: torch.Tensor, k: int, num_frames: int) -> SamplerOutput:
    """The first ``k`` positions of ``order`` (B, T) as a hard sampling matrix in temporal order."""
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(num_frames, device=order.device).expand_as(order))
    return top_k_priority(-rank.float(), k)
