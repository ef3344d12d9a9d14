"""DAS: Deep Attention-guided adaptive Subsampling, the paper's sampling module.

Given a window X of T frames, DAS computes the non-learned features F (B, T, d) of every frame
(:mod:`sampler.features`) and then, following the paper's equations:

1. base attention a_base (B, T) = MLP_base(F_t), one score per frame (shared weights over t);
2. H heads; head h maps the window to k Softplus scale factors s_h = Softplus(MLP_h(pool(F)))
   (B, k) (eq. 1). ``pool`` is the mean and the max of F over the window's valid frames, so the
   heads work for any T and ignore padding (flattening a fixed T would tie the heads to frame
   positions, which is what DAS is meant to avoid);
3. A_h[:, j, :] = a_base * s_h[:, j] (eq. 2); A = mean over heads (eq. 3);
4. tau = tau0 * (0.5 + sigmoid(MLP_temp(pool(F)))), always in [0.5 tau0, 1.5 tau0] (eq. 4);
5. in training, Gumbel noise G (B, k, T); P_soft = softmax over T of (A + G) / tau (eqs. 5-6);
   the hard one-hot rows pass forward and P_soft's gradient passes backward (straight-through);
6. outputs: the sampling matrix P (B, k, T) and the frames P X.

F is the per-window z-score of the features (how a frame stands out from its window) next to
the log-compressed raw features (what the window looks like overall).

The flaw of the literal formulation: every row of A is a positive multiple of a_base, so without
noise all rows share one argmax and eval mode returns the same frame k times. By default DAS
therefore selects without replacement: row j's logits mask the frames that rows < j picked
(the DPS top-k relaxation), so the k picks are distinct, and in eval mode (no noise) they are
exactly the top-k frames of a_base. ``paper_exact=True`` keeps the literal formulation.

``selection="segments"`` (not in the paper) trades some freedom for coverage: the window is cut
into k equal segments (frame t belongs to segment floor(t k / T)) and row j picks one frame of
segment j (Gumbel-softmax over that segment's frames in training, the argmax of a_base within the
segment at inference). The picks then cover the window as Uniform's do, while which frame of
each segment is picked stays input-adaptive (e.g. the one frame of a segment that is not black
or frozen). Top-k of a per-frame score, the default, may instead pick k neighbouring frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import SamplerError
from core.order import by_priority

from .base import Sampler, as_order, check_window, prefix_picks
from .features import NUM_FEATURES, frame_features, frame_validity, masked_pool, standardize_over_time
from .gumbel import (
    in_temporal_order,
    penalize_invalid,
    select_independent,
    select_without_replacement,
    top_k_priority,
)
from .learned_features import LearnedDescriptor
from .output import SamplerOutput


def mlp(in_features: int, hidden: int, out_features: int, *, out_bias: bool = True) -> nn.Sequential:
    """A two-layer perceptron: Linear, ReLU, Linear (``out_bias``: whether the last one has a bias)."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features, bias=out_bias))


class FrameDescriptor(nn.Module):
    """Turns a window into the inputs of the learned samplers (no parameters).

    Args:
        feature_size: working resolution of :func:`sampler.features.frame_features`.
    """

    dim = 2 * NUM_FEATURES

    def __init__(self, *, feature_size: int = 64) -> None:
        super().__init__()
        self.feature_size = int(feature_size)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, T, 2 d): per-window z-scored features next to the raw ones, zero on invalid frames."""
        return self.from_raw(frame_features(x, self.feature_size), valid)

    @staticmethod
    def from_raw(raw: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The same from already computed :func:`sampler.features.frame_features` (B, T, d)."""
        return torch.cat([standardize_over_time(raw, valid), raw * valid.unsqueeze(2)], dim=2)


@dataclass(frozen=True)
class DASAttention:
    """The intermediate quantities of one DAS forward pass (for inspection and plots).

    Attributes:
        base: a_base (B, T).
        scales: the heads' scale factors s_h (B, H, k).
        scores: A (B, k, T), the mean over heads of a_base * s_h.
        tau: the adaptive temperature (B,).
        valid: (B, T) bool, the frames DAS may prefer (not padded, not empty).
    """

    base: torch.Tensor
    scales: torch.Tensor
    scores: torch.Tensor
    tau: torch.Tensor
    valid: torch.Tensor


class DASSampler(Sampler):
    """The DAS sampling module.

    Args:
        num_frames: T, frames per window.
        k: frames to pick.
        feature_size: working resolution of the frame features (pixels).
        heads: H, number of scale heads.
        hidden: width of the hidden layer of every MLP.
        tau0: base temperature; tau stays within [0.5 tau0, 1.5 tau0].
        features: what DAS sees of each frame: ``hand`` (the hand-made features, the paper's),
            ``learned`` (a tiny CNN trained end to end, :mod:`sampler.learned_features`) or
            ``both`` (concatenated).
        paper_exact: pick each row independently as the paper writes it (picks may repeat and
            do repeat in eval mode); the default picks without replacement.
        selection: ``top_k`` (the k best frames anywhere in the window, the default) or
            ``segments`` (the best frame of each of k equal segments; see the module docstring).
    """

    label = "DAS"

    outside_segment: torch.Tensor  # a buffer, (k, T)

    def __init__(
        self,
        *,
        num_frames: int,
        k: int,
        feature_size: int = 64,
        heads: int = 4,
        hidden: int = 64,
        tau0: float = 1.0,
        paper_exact: bool = False,
        features: str = "hand",
        selection: str = "top_k",
    ) -> None:
        super().__init__(num_frames, k)
        if heads < 1:
            raise SamplerError(f"DAS needs at least one head, got heads={heads}; use heads=1 or more")
        if tau0 <= 0:
            raise SamplerError(f"DAS tau0 must be positive, got tau0={tau0}; use e.g. tau0=1.0")
        if features not in ("hand", "learned", "both"):
            raise SamplerError(f"DAS features must be hand, learned or both, got {features!r}")
        if selection not in ("top_k", "segments"):
            raise SamplerError(f"DAS selection must be top_k or segments, got {selection!r}")
        if selection == "segments" and paper_exact:
            raise SamplerError(
                "DAS selection='segments' picks one frame per segment; it cannot be combined with paper_exact=True"
            )
        self.features = features
        self.selection = selection
        self.order_rule = (
            "frame score a_base, input-adaptive"
            if selection == "top_k"
            else "each segment's best frame by frame score a_base, then the rest by score"
        )
        # (k, T) True where frame t lies outside segment j (used by selection="segments")
        segment = torch.arange(num_frames) * k // num_frames
        self.register_buffer("outside_segment", segment.unsqueeze(0) != torch.arange(k).unsqueeze(1), persistent=False)
        self.describe = FrameDescriptor(feature_size=feature_size)
        self.learned = LearnedDescriptor() if features != "hand" else None
        d = (FrameDescriptor.dim if features != "learned" else 0) + (
            self.learned.dim if self.learned is not None else 0
        )
        # No bias at the end: a constant added to every frame's score cancels in the softmax over
        # the frames (and in the top-k), so it could never learn (model files that have it load
        # without it, sampler/model_file.py).
        self.base = mlp(d, hidden, 1, out_bias=False)
        self.heads = nn.ModuleList(mlp(2 * d, hidden, k) for _ in range(heads))
        self.temperature = mlp(2 * d, hidden, 1)
        self.tau0 = float(tau0)
        self.paper_exact = bool(paper_exact)

    def attention(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> DASAttention:
        """Equations 1-4 for a window ``x`` (B, T, C, H, W) (any H, W)."""
        check_window(x, self.num_frames, valid)
        usable = frame_validity(x, valid)
        raw = frame_features(x, self.describe.feature_size) if self.features != "learned" else None
        learned = self.learned(x, usable) if self.learned is not None else None
        return self.attention_from_features(raw, usable, learned=learned)

    def attention_from_features(
        self, raw: torch.Tensor | None, usable: torch.Tensor, *, learned: torch.Tensor | None = None
    ) -> DASAttention:
        """Equations 1-4 from the window's frame features (B, T, d) (:func:`frame_features` at
        the sampler's feature size) and its (B, T) mask of usable frames (real and not empty).
        ``learned``: the learned descriptor (B, T, e), needed when ``features`` is learned or both."""
        parts = []
        if self.features != "learned":
            if raw is None:
                raise SamplerError("this DAS sampler uses the hand-made frame features; pass them (raw)")
            parts.append(FrameDescriptor.from_raw(raw, usable))
        if self.learned is not None:
            if learned is None:
                raise SamplerError(
                    "this DAS sampler uses learned features, which need the frames; call select(x) or attention(x)"
                )
            parts.append(learned)
        features = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
        pooled = masked_pool(features, usable)
        base = self.base(features).squeeze(2)  # (B, T)
        scales = torch.stack([F.softplus(head(pooled)) for head in self.heads], dim=1)  # (B, H, k)
        scores = (base[:, None, None, :] * scales.unsqueeze(3)).mean(dim=1)  # (B, k, T)
        tau = self.tau0 * (0.5 + torch.sigmoid(self.temperature(pooled).squeeze(1)))
        return DASAttention(base=base, scales=scales, scores=scores, tau=tau, valid=usable)

    def select(self, x: torch.Tensor, valid: torch.Tensor | None = None, k: int | None = None) -> SamplerOutput:
        return self._select(self.attention(x, valid), self.pick_count(k))

    @property
    def uses_frame_features(self) -> bool:
        """True for the hand-made features alone; the learned ones need the frames."""
        return self.learned is None

    def select_features(self, raw: torch.Tensor, usable: torch.Tensor, k: int | None = None) -> SamplerOutput:
        """:meth:`select` from precomputed frame features: what a streaming runtime calls when it
        has computed each frame's features as the frame arrived (the same picks, tested)."""
        return self._select(self.attention_from_features(raw, usable), self.pick_count(k))

    def order(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The usable frames by descending frame score a_base (the inference picks of every k are
        its prefixes); with ``selection="segments"`` each segment's best usable frame comes first."""
        return self._order(self.attention(x, valid))

    def order_features(self, raw: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
        """:meth:`order` from precomputed frame features (as :meth:`select_features`)."""
        return self._order(self.attention_from_features(raw, usable))

    def _order(self, att: DASAttention) -> torch.Tensor:
        first = None
        if self.selection == "segments":
            winners = self._segment_winners(att.base, att.valid)
            first = (torch.zeros_like(att.valid).scatter_(1, winners, True) & att.valid).cpu().numpy()
        order = by_priority(att.base.detach().float().cpu().numpy(), att.valid.cpu().numpy(), first=first)
        return as_order(order, att.base)

    def _segment_winners(self, base: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, k) the best frame of each segment (valid frames before invalid ones)."""
        scaled = penalize_invalid(base.unsqueeze(1).expand(-1, self.k, -1), ~valid)
        return scaled.masked_fill(self.outside_segment, float("-inf")).argmax(dim=2)

    def _select(self, att: DASAttention, k: int) -> SamplerOutput:
        inference = not (self.training or self.paper_exact or att.scores.requires_grad)
        if self.selection == "segments" and inference:
            return prefix_picks(self._order(att), k, self.num_frames)
        if self.selection == "segments":
            logits = self.explore(att.scores)
            scaled = penalize_invalid(logits / att.tau[:, None, None], ~att.valid)
            matrix, indices = select_independent(scaled.masked_fill(self.outside_segment, float("-inf")))
            if k < self.k:  # the k segments whose picks score highest (in the relaxation's terms)
                best = scaled.gather(2, indices.unsqueeze(2)).squeeze(2)
                keep = best.argsort(dim=1, descending=True, stable=True)[:, :k]
                return in_temporal_order(
                    matrix.gather(1, keep.unsqueeze(2).expand(-1, -1, matrix.shape[2])), indices.gather(1, keep)
                )
            return SamplerOutput(matrix=matrix, indices=indices)  # segment j precedes segment j + 1
        if inference:
            # Inference: every row of A ranks the frames as a_base does (positive scales, no
            # noise), so the k rows' picks without replacement are the top k of a_base, with
            # the invalid frames ranked after every valid one. One top-k instead of k passes.
            spread = att.base.amax(dim=1, keepdim=True) - att.base.amin(dim=1, keepdim=True) + 1.0
            return top_k_priority(att.base + spread * att.valid, k)
        logits = self.explore(att.scores[:, :k])
        scaled = penalize_invalid(logits / att.tau[:, None, None], ~att.valid)
        choose = select_independent if self.paper_exact else select_without_replacement
        matrix, indices = choose(scaled)
        return in_temporal_order(matrix, indices)
