"""The baselines of the DAS paper, behind the same interface as :class:`sampler.das.DASSampler`.

- :class:`FullSampler`: every frame (k = T).
- :class:`UniformSampler`: k equidistant frames.
- :class:`RandomSampler`: k distinct frames uniformly at random.
- :class:`DPSSampler`: Deep Probabilistic Subsampling (Huijben et al., ICLR 2020), one learned
  logit per frame position shared by all inputs, Gumbel top-k.
- :class:`ADPSSampler`: Active DPS (Van Gorp et al., ICML 2021), k sequential picks steered by
  an LSTM that sees what was picked so far.

All of them prefer valid frames: padded (``valid=False``) or empty frames are picked only when
fewer than k valid frames exist.
"""

from __future__ import annotations

import torch
from torch import nn

from core.errors import SamplerError
from core.order import by_priority, coarse_to_fine, put_first

from .base import Sampler, as_order, check_window, prefix_picks
from .das import FrameDescriptor, mlp
from .features import frame_features, frame_validity
from .gumbel import in_temporal_order, penalize_invalid, select_row, select_without_replacement, top_k_priority
from .output import SamplerOutput


class FullSampler(Sampler):
    """All T frames, in order (the upper bound in accuracy and in cost).

    Args:
        num_frames: T.
        k: must be T when given (it exists so every sampler is built the same way).
    """

    label = "Full"
    keeps_all = True

    order_rule = "coarse to fine (every frame is kept)"

    def __init__(self, *, num_frames: int, k: int | None = None) -> None:
        super().__init__(num_frames, num_frames if k is None else k)

    def select(self, x: torch.Tensor, valid: torch.Tensor | None = None, k: int | None = None) -> SamplerOutput:
        check_window(x, self.num_frames, valid)
        k = self.pick_count(k)
        if k < self.num_frames:  # a prefix of the order (training with train.k_schedule)
            return prefix_picks(self.order(x, valid), k, self.num_frames)
        b, t = x.shape[:2]
        indices = torch.arange(t, device=x.device).expand(b, t)
        matrix = torch.eye(t, device=x.device).expand(b, t, t)
        return SamplerOutput(matrix=matrix, indices=indices)

    def order(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Coarse to fine over the usable frames (:func:`core.order.coarse_to_fine`)."""
        check_window(x, self.num_frames, valid)
        return as_order(coarse_to_fine(frame_validity(x, valid).cpu().numpy()), x)


class UniformSampler(Sampler):
    """k equidistant frames: the middles of k equal segments of the valid frames.

    With n valid frames (n >= k), pick j is the valid frame of rank floor((2j + 1) n / 2k).

    Args:
        num_frames: T.
        k: frames to pick.
        nested: pick the first k frames of the coarse-to-fine order instead (the middle frame,
            the quarter points, the eighths, ...), so that the picks for every k <= k are nested
            (one model for every k, ``train.k_schedule``); prefixes of 1, 3, 7, ... frames are
            evenly spaced.
    """

    label = "Uniform"

    def __init__(self, *, num_frames: int, k: int, nested: bool = False) -> None:
        super().__init__(num_frames, k)
        self.nested = bool(nested)
        self.order_rule = (
            "coarse to fine (the middle frame, the quarter points, the eighths, ...)"
            if self.nested
            else "the k segment middles, then coarse to fine"
        )

    def select(self, x: torch.Tensor, valid: torch.Tensor | None = None, k: int | None = None) -> SamplerOutput:
        check_window(x, self.num_frames, valid)
        k = self.pick_count(k)
        if self.nested:
            return prefix_picks(self.order(x, valid), k, self.num_frames)
        return top_k_priority(self._middles(frame_validity(x, valid), k), k)

    def _middles(self, usable: torch.Tensor, k: int) -> torch.Tensor:
        """(B, T) priority whose top k are the middles of k equal segments of the usable frames."""
        rank = usable.long().cumsum(dim=1) - 1  # rank of each valid frame among the valid ones
        count = usable.sum(dim=1, keepdim=True)
        j = torch.arange(k, device=usable.device)
        targets = torch.div((2 * j + 1) * count, 2 * k, rounding_mode="floor")  # (B, k)
        hit = usable & (rank.unsqueeze(2) == targets.unsqueeze(1)).any(dim=2)
        position = torch.arange(self.num_frames, device=usable.device) / self.num_frames  # earlier wins ties
        return 2.0 * hit + usable.float() - 0.5 * position

    def order(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Coarse to fine over the usable frames; without ``nested``, the k middles come first."""
        check_window(x, self.num_frames, valid)
        usable = frame_validity(x, valid)
        order = coarse_to_fine(usable.cpu().numpy())
        if not self.nested:
            first = top_k_priority(self._middles(usable, self.k), self.k).indices
            ahead = torch.zeros_like(usable).scatter_(1, first, True)
            order = put_first(order, ahead.cpu().numpy())
        return as_order(order, x)


class RandomSampler(Sampler):
    """k distinct frames uniformly at random among the valid ones, in train and eval mode.

    Args:
        num_frames: T.
        k: frames to pick.
        seed: seed of the sampler's own random generator (reproducible picks); None uses
            torch's global generator.
    """

    label = "Random"

    order_rule = "random, a fresh draw per window"

    def __init__(self, *, num_frames: int, k: int, seed: int | None = None) -> None:
        super().__init__(num_frames, k)
        self.seed = seed
        self._generator = None if seed is None else torch.Generator().manual_seed(int(seed))

    def select(self, x: torch.Tensor, valid: torch.Tensor | None = None, k: int | None = None) -> SamplerOutput:
        check_window(x, self.num_frames, valid)
        usable = frame_validity(x, valid)
        noise = torch.rand(usable.shape, generator=self._generator).to(x.device)
        return top_k_priority(noise + 2.0 * usable.float(), self.pick_count(k))

    def order(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """A random order of the usable frames (a fresh draw per call), then the others."""
        check_window(x, self.num_frames, valid)
        usable = frame_validity(x, valid).cpu().numpy()
        noise = torch.rand(usable.shape, generator=self._generator).numpy()
        return as_order(by_priority(noise, usable), x)


class DPSSampler(Sampler):
    """Deep Probabilistic Subsampling with the top-k relaxation (Huijben et al., ICLR 2020).

    One learned logit per frame position, shared by all inputs (content-agnostic). Training adds
    one Gumbel draw per window and frame, takes the top-k of the perturbed logits, and relaxes
    row j as a softmax over the frames not picked by rows < j, at a constant temperature
    (straight-through). Eval mode picks the top-k logits. The official code trains the logits
    with a larger learning rate (10x); :meth:`sampler.model.SampledClassifier.param_groups`
    applies ``logit_lr_multiplier``.

    Args:
        num_frames: T.
        k: frames to pick.
        temperature: the constant softmax temperature of the relaxation.
        init_std: standard deviation of the initial logits.
        logit_lr_multiplier: learning-rate factor of the logits.
    """

    label = "DPS"

    order_rule = "learned position logits (the same order for every window)"

    def __init__(
        self,
        *,
        num_frames: int,
        k: int,
        temperature: float = 1.0,
        init_std: float = 0.25,
        logit_lr_multiplier: float = 10.0,
    ) -> None:
        super().__init__(num_frames, k)
        if temperature <= 0:
            raise SamplerError(f"temperature must be positive, got temperature={temperature}; use e.g. 1.0")
        self.logits = nn.Parameter(torch.randn(num_frames) * init_std)
        self.temperature = float(temperature)
        self.logit_lr_multiplier = float(logit_lr_multiplier)

    def select(self, x: torch.Tensor, valid: torch.Tensor | None = None, k: int | None = None) -> SamplerOutput:
        check_window(x, self.num_frames, valid)
        usable = frame_validity(x, valid)
        logits = self.logits.expand(x.shape[0], -1)
        logits = self.explore(logits)  # one draw per frame, shared by the k rows
        scaled = penalize_invalid(logits / self.temperature, ~usable)
        matrix, indices = select_without_replacement(scaled.unsqueeze(1).expand(-1, self.pick_count(k), -1))
        return in_temporal_order(matrix, indices)

    def order(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The usable frames by descending logit (the same for every window), then the others."""
        check_window(x, self.num_frames, valid)
        usable = frame_validity(x, valid).cpu().numpy()
        logits = self.logits.detach().float().cpu().numpy()[None].repeat(len(usable), axis=0)
        return as_order(by_priority(logits, usable), x)


class ADPSSampler(Sampler):
    """Active Deep Probabilistic Subsampling (Van Gorp et al., ICML 2021).

    k sequential steps. At step i an LSTM cell reads an embedding of the frames picked so far
    and a per-step head maps its hidden state to logits over the T positions; frames picked at
    earlier steps are masked; training adds fresh Gumbel noise at every step; the pick is
    one-hot forward and softmax backward (straight-through). The first step sees nothing yet
    (zero input), as in the official code.

    "The embedding of the frames picked so far" is, here, a linear embedding of the mean of the
    picked frames' non-learned features (:class:`sampler.das.FrameDescriptor`), gathered with
    the straight-through rows so the gradient reaches the earlier picks. (The official code
    embeds the partially observed input with the task network's encoder; using features keeps
    ADPS as cheap as DAS and lets it run on a feature-resolution copy of the window.)

    Args:
        num_frames: T.
        k: frames to pick.
        feature_size: working resolution of the frame features (pixels).
        hidden: width of the LSTM state and of the embedding.
        temperature: the constant softmax temperature of the relaxation.
    """

    label = "ADPS"

    order_rule = "the LSTM's sequential picks, then the other frames in time order"

    def __init__(
        self,
        *,
        num_frames: int,
        k: int,
        feature_size: int = 64,
        hidden: int = 64,
        temperature: float = 1.0,
    ) -> None:
        super().__init__(num_frames, k)
        if temperature <= 0:
            raise SamplerError(f"temperature must be positive, got temperature={temperature}; use e.g. 1.0")
        self.describe = FrameDescriptor(feature_size=feature_size)
        self.embed = nn.Sequential(nn.Linear(FrameDescriptor.dim, hidden), nn.LeakyReLU(0.2))
        self.lstm = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(mlp(hidden, hidden, num_frames) for _ in range(k))
        self.hidden = int(hidden)
        self.temperature = float(temperature)

    def select(self, x: torch.Tensor, valid: torch.Tensor | None = None, k: int | None = None) -> SamplerOutput:
        check_window(x, self.num_frames, valid)
        usable = frame_validity(x, valid)
        return self.select_features(frame_features(x, self.describe.feature_size), usable, k)

    def order(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        check_window(x, self.num_frames, valid)
        return self.order_features(frame_features(x, self.describe.feature_size), frame_validity(x, valid))

    @property
    def uses_frame_features(self) -> bool:
        return True

    def order_features(self, raw: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
        """:meth:`order` from precomputed frame features: the k steps' picks in the order they
        were made, then the other usable frames, then the rest (in temporal order)."""
        matrix, steps = self._steps(raw, usable, self.k)
        t = usable.shape[1]
        rank = torch.full(usable.shape, float(t), device=usable.device)  # later steps rank lower
        rank.scatter_(1, steps, torch.arange(self.k, device=usable.device, dtype=rank.dtype).expand_as(steps))
        picked = torch.zeros_like(usable).scatter_(1, steps, True)
        order = by_priority((-rank).cpu().numpy(), usable.cpu().numpy(), first=picked.cpu().numpy())
        return as_order(order, raw)

    def select_features(self, raw: torch.Tensor, usable: torch.Tensor, k: int | None = None) -> SamplerOutput:
        """:meth:`select` from precomputed frame features (B, T, d) and the usable mask (B, T)."""
        return in_temporal_order(*self._steps(raw, usable, self.pick_count(k)))

    def _steps(self, raw: torch.Tensor, usable: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``k`` steps: (rows (B, k, T) straight-through, picks (B, k)) in step order."""
        features = FrameDescriptor.from_raw(raw, usable)  # (B, T, d)
        b = raw.shape[0]
        state = (features.new_zeros(b, self.hidden), features.new_zeros(b, self.hidden))
        step_input = features.new_zeros(b, self.hidden)
        picked_sum = torch.zeros_like(features[:, 0])
        taken = torch.zeros_like(usable)
        rows, picks = [], []
        for step, head in enumerate(self.heads[:k]):
            state = self.lstm(step_input, state)
            logits = head(state[0])
            logits = self.explore(logits)
            row, index = select_row(penalize_invalid(logits / self.temperature, ~usable), taken)
            taken = taken.scatter(
                1, index.unsqueeze(1), torch.ones_like(taken[:, :1])
            )  # a tensor src: exportable to ONNX
            rows.append(row)
            picks.append(index)
            picked_sum = picked_sum + torch.einsum("bt,btd->bd", row, features)
            step_input = self.embed(picked_sum / (step + 1))
        return torch.stack(rows, dim=1), torch.stack(picks, dim=1)
