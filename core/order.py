"""Best-first frame orders: the order in which a window's frames are worth embedding.

Every sampler gives an order of a window's T positions, not only a set of k: the engine embeds
frames in that order, round by round, and stops when the prediction is settled (or k_max frames,
or the budget, say stop). The first k positions of an order are the sampler's k picks. Usable
frames (real, not padding, not empty) always come before the others.

Two orders need no model and are written here once, for the torch model and the exported package:

- :func:`coarse_to_fine`: Uniform's order. The middle usable frame, then the quarter points, then
  the eighths, ...: every prefix of 1, 3, 7, 15, ... frames is an evenly spaced grid, and each
  prefix refines the one before.
- :func:`by_priority`: the order of a per-frame score (DAS's frame score, DPS's logits, random
  noise), highest first, ties to the earlier frame.
"""

from __future__ import annotations

import numpy as np


def coarse_to_fine_ranks(n: int) -> np.ndarray:
    """The ranks 0..n-1 of n frames in coarse-to-fine order (level L takes the ranks
    floor((2j + 1) n / 2^(L+1)), j = 0..2^L - 1, not taken by an earlier level)."""
    out: list[int] = []
    taken = np.zeros(n, dtype=bool)
    level = 0
    while len(out) < n:
        parts = 2 ** (level + 1)
        for j in range(2**level):
            r = (2 * j + 1) * n // parts
            if not taken[r]:
                taken[r] = True
                out.append(r)
        level += 1
        if parts > 2 * n:  # every rank is reachable by now; add any left (n not a power of two)
            out += [r for r in range(n) if not taken[r]]
            break
    return np.asarray(out, dtype=np.int64)


def coarse_to_fine(usable: np.ndarray) -> np.ndarray:
    """(B, T) bool -> (B, T) int64 positions: each row's usable frames coarse to fine, then the
    others in temporal order."""
    usable = np.asarray(usable, dtype=bool)
    out = np.empty(usable.shape, dtype=np.int64)
    for b, row in enumerate(usable):
        good = np.flatnonzero(row)
        out[b] = np.concatenate([good[coarse_to_fine_ranks(len(good))], np.flatnonzero(~row)])
    return out


def by_priority(priority: np.ndarray, usable: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """(B, T) scores and usable mask -> (B, T) int64 positions: usable frames first, each group by
    descending score, ties to the earlier frame. ``first`` (B, T) bool puts its frames ahead of
    all others (a sampler whose k picks are chosen by another rule, e.g. one per segment)."""
    priority = np.asarray(priority, dtype=np.float64)
    usable = np.asarray(usable, dtype=bool)
    first = np.zeros_like(usable) if first is None else np.asarray(first, dtype=bool)
    t = np.arange(priority.shape[1])
    # lexsort: the last key is the primary one
    return np.stack([np.lexsort((t, -p, ~u, ~f)) for p, u, f in zip(priority, usable, first)]).astype(np.int64)


def put_first(order: np.ndarray, first: np.ndarray) -> np.ndarray:
    """``order`` (B, T) with the positions where ``first`` (B, T) is True moved ahead (each part
    keeping its order)."""
    order = np.asarray(order)
    ahead = np.take_along_axis(np.asarray(first, dtype=bool), order, axis=1)
    return np.stack([np.concatenate([o[a], o[~a]]) for o, a in zip(order, ahead)]).astype(np.int64)


def picks(order: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` positions of each row of ``order``, ascending (a sampler's k picks)."""
    return np.sort(np.asarray(order)[:, :k], axis=1)
