"""When a window's prediction is settled: the early-exit rule, written once for the runtime (which
embeds a window's frames best-first, round by round) and for training (which calibrates the rule
and scores it).

A round ends at each prefix size of :func:`rounds` (1, 2, 4, ... frames, then k_max). After a
round the pooled prediction is checked: the window exits when its top class probability reaches
the rule's threshold, or when the round was the last one (k_max frames). A threshold above 1
never exits early: that is fixed-k inference, one round of k_max frames.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import ConfigError

EXIT_KINDS = ("max_prob",)
NEVER = 2.0  # a threshold no probability reaches: always k_max frames


def rounds(k_max: int) -> tuple[int, ...]:
    """The prefix sizes after which a prediction is checked: 1, 2, 4, ... below ``k_max``, then
    ``k_max``."""
    if k_max < 1:
        raise ValueError(f"k_max must be >= 1, got {k_max}")
    out = [1]
    while out[-1] * 2 < k_max:
        out.append(out[-1] * 2)
    return tuple(dict.fromkeys([*out, k_max]))


@dataclass(frozen=True)
class ExitRule:
    """Stop embedding a window's frames once its top class probability reaches ``threshold``.

    Attributes:
        threshold: in (0, 1] to exit early; :data:`NEVER` (> 1) for fixed k.
        kind: ``max_prob`` (the only rule so far).
        tolerance: the score loss against k_max the calibration allowed (AUC), for the record.
        calibration: the validation figures the threshold was chosen on (plain values).
    """

    threshold: float = NEVER
    kind: str = "max_prob"
    tolerance: float = 0.0
    calibration: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in EXIT_KINDS:
            raise ConfigError(f"exit rule kind must be one of {', '.join(EXIT_KINDS)}, got {self.kind!r}")
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold) and self.threshold > 0):
            raise ConfigError(f"exit threshold must be a finite number > 0, got {self.threshold!r}")

    @property
    def early(self) -> bool:
        """Whether the rule can stop before k_max frames."""
        return self.threshold <= 1.0

    def describe(self) -> str:
        """One line: the rule and, when calibrated, what it cost on validation."""
        if not self.early:
            return "none (fixed k: every window embeds k_max frames)"
        text = f"stop when the top class probability >= {self.threshold:.4f}"
        c = self.calibration or {}
        if c:
            text += (
                f"; on validation {c.get('val_mean_frames', math.nan):.2f} frames/window of k_max "
                f"{c.get('k_max')}, AUC {c.get('val_auc', math.nan):.3f} vs {c.get('val_auc_k_max', math.nan):.3f} "
                f"at k_max (windows {c.get('val_window_auc', math.nan):.3f} vs "
                f"{c.get('val_window_auc_k_max', math.nan):.3f}; tolerance {self.tolerance:g})"
            )
        return text

    def settled(self, probs: np.ndarray) -> np.ndarray:
        """(N, C) probabilities -> (N,) bool: the predictions that are settled."""
        return np.asarray(probs).max(axis=-1) >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ExitRule:
        """The rule a model card stores (None or {}: never exit early)."""
        if not data:
            return cls()
        known = {"threshold", "kind", "tolerance", "calibration"}
        return cls(**{k: v for k, v in data.items() if k in known})


def exit_round(probs_by_round: np.ndarray, rule: ExitRule) -> np.ndarray:
    """(W, R, C) probabilities after each round -> (W,) index of the round each window exits at
    (the first settled one, else the last)."""
    settled = rule.settled(probs_by_round)  # (W, R)
    settled[:, -1] = True
    return settled.argmax(axis=1)


def frames_used(ladder: tuple[int, ...], at: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Frames embedded by windows exiting at round ``at`` (W,), with ``usable`` (W,) usable frames
    each (a window never embeds more frames than it has)."""
    return np.minimum(np.asarray(ladder)[at], np.asarray(usable))
