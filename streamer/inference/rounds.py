"""Best-first embedding in rounds: a batch of windows grows their predictions frame by frame.

Each window's frames are taken in its sampler's best-first order (usable frames first). Round r
brings every window still undecided up to the next prefix size of :func:`core.exit.rounds`
(1, 2, 4, ..., its k_max): the frames of all those windows, of all streams, are embedded in one
backbone call (frames already embedded, e.g. by an overlapping window, cost nothing), then the
head pools each window's prefix and the exit rule looks at the prediction. A window is done at
the first of:

- ``confident``: the rule says its prediction is settled;
- ``k_max``: it used k_max frames (or all its usable frames);
- ``budget``: the frames this call may still embed (the process-wide budget) do not cover its
  next round. A window always gets its first round, so no window goes unclassified.

Fixed-k inference is the special case of a rule that never exits: one round of k_max frames
(with a budget the rounds still climb the ladder, so the budget can stop a window between them).
Nothing here knows about torch, ONNX or the cache: the engine passes three functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.exit import ExitRule, rounds

EXITS = ("confident", "k_max", "budget")


@dataclass(frozen=True)
class RoundsResult:
    """What the rounds decided for each window of the batch.

    Attributes:
        probs: (B, C) the prediction at exit.
        used: per window, the positions (in the window) whose embeddings the prediction pools, in
            best-first order (usable frames only).
        exits: per window, one of :data:`EXITS`.
        rounds_run: how many embed + head rounds the batch took.
    """

    probs: np.ndarray
    used: list[list[int]]
    exits: list[str]
    rounds_run: int


def ladder(k_max: int, usable: int, rule: ExitRule, *, budgeted: bool = False) -> list[int]:
    """The prefix sizes one window goes through: the round ladder up to its k_max, cut at its
    usable frames; a single round of k_max when nothing can stop it early (a rule that never
    exits and no budget)."""
    limit = max(1, min(k_max, usable))
    if not (rule.early or budgeted):
        return [limit]
    return [j for j in rounds(k_max) if j < limit] + [limit]


def run_rounds(
    order: np.ndarray,
    usable: np.ndarray,
    k_max: Sequence[int],
    rule: ExitRule,
    *,
    cost: Callable[[int, np.ndarray], int],
    embed: Callable[[list[tuple[int, int]]], None],
    head: Callable[[list[int], np.ndarray, np.ndarray], np.ndarray],
    allowance: int | None = None,
) -> RoundsResult:
    """Run the rounds for a batch of B windows.

    Args:
        order: (B, T) each window's best-first order of positions (usable first).
        usable: (B, T) which positions hold a usable frame.
        k_max: per window, the most frames it may use (the k_max in force, >= 1).
        rule: the exit rule (one that never exits early gives one round of k_max frames).
        cost: ``cost(b, positions)``: how many of window b's ``positions`` still need embedding.
        embed: ``embed([(b, t), ...])``: embed those frames (called once per round).
        head: ``head(rows, positions (R, K), mask (R, K))``: the (R, C) predictions of windows
            ``rows`` pooling the embeddings at ``positions`` where ``mask`` is True (a row with
            no True pools nothing usable: the model's answer for an empty window).
        allowance: frames the call may embed in all, spent in batch order; every window's first
            round is granted even beyond it (None: no budget).
    """
    order = np.asarray(order)
    usable = np.asarray(usable, dtype=bool)
    count = usable.sum(axis=1)
    steps = [ladder(int(k_max[b]), int(count[b]), rule, budgeted=allowance is not None) for b in range(len(order))]
    step = [0] * len(order)
    probs: np.ndarray | None = None
    used: list[list[int]] = [[] for _ in order]
    exits = [""] * len(order)
    left = allowance
    active = list(range(len(order)))
    n_rounds = 0
    while active:
        granted: list[int] = []
        for b in active:
            prefix = order[b, : steps[b][step[b]]]
            if step[b] > 0 and left is not None:
                need = cost(b, prefix)
                if need > max(left, 0):  # its current prediction stands (frames already embedded are free)
                    exits[b] = "budget"
                    continue
                left -= need
            elif left is not None:
                left -= cost(b, prefix)
            granted.append(b)
        if not granted:
            break
        embed([(b, int(t)) for b in granted for t in order[b, : steps[b][step[b]]] if usable[b, t]])
        width = max(steps[b][step[b]] for b in granted)
        positions = np.zeros((len(granted), width), dtype=np.int64)
        mask = np.zeros((len(granted), width), dtype=bool)
        for i, b in enumerate(granted):
            j = steps[b][step[b]]
            positions[i, :j] = order[b, :j]
            mask[i, :j] = usable[b, order[b, :j]]
        out = np.asarray(head(granted, positions, mask))
        if probs is None:
            probs = np.zeros((len(order), out.shape[1]), dtype=out.dtype)
        probs[granted] = out
        settled = rule.settled(out)
        n_rounds += 1
        for i, b in enumerate(granted):
            used[b] = [int(t) for t in positions[i][mask[i]]]
            if step[b] == len(steps[b]) - 1:
                exits[b] = "k_max"
            elif settled[i]:
                exits[b] = "confident"
            else:
                step[b] += 1
        active = [b for b in active if not exits[b]]
    assert probs is not None or not len(order)
    return RoundsResult(probs if probs is not None else np.zeros((0, 0)), used, exits, n_rounds)
