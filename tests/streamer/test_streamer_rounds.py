"""Best-first rounds: windows grow their predictions frame by frame and stop when settled, at
k_max, or when the budget runs out; batching never changes a decision."""

from __future__ import annotations

import numpy as np

from core.exit import ExitRule
from core.order import by_priority
from streamer.inference.rounds import ladder, run_rounds

T = 16


class Toy:
    """A model whose frame 'embedding' is a number and whose prediction is the sigmoid of the
    mean over the pooled frames: a window of large values is confidently class 0 after one frame."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.embedded: set[tuple[int, int]] = set()
        self.calls: list[int] = []  # frames per embed call

    def cost(self, b, positions):
        return sum((b, int(t)) not in self.embedded for t in positions)

    def embed(self, pairs):
        new = [p for p in pairs if p not in self.embedded]
        self.calls.append(len(new))
        self.embedded.update(new)

    def head(self, rows, positions, mask):
        out = []
        for b, pos, m in zip(rows, positions, mask):
            assert all((b, int(t)) in self.embedded for t in pos[m]), "pooled only embedded frames"
            s = float(self.values[b, pos[m]].mean()) if m.any() else 0.0
            p0 = 1.0 / (1.0 + np.exp(-s))
            out.append([p0, 1.0 - p0])
        return np.array(out)


def batch(seed: int = 0, windows: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = rng.normal(0.0, 1.0, (windows, T))
    values[0] += 6.0  # confident at once
    values[1] -= 0.2  # undecided: needs many frames
    usable = np.ones((windows, T), bool)
    usable[2, 5:] = False  # a short (padded) window
    usable[3] = False  # lost contact: nothing usable
    order = by_priority(np.abs(values), usable)
    return values, usable, order


def run(values, usable, order, rule, k_max=8, allowance=None, rows=None):
    rows = list(range(len(order))) if rows is None else rows
    toy = Toy(values[rows])
    res = run_rounds(
        order[rows],
        usable[rows],
        [k_max] * len(rows),
        rule,
        cost=toy.cost,
        embed=toy.embed,
        head=toy.head,
        allowance=allowance,
    )
    return res, toy


def test_the_ladder_doubles_up_to_k_max_and_stops_at_the_usable_frames():
    rule = ExitRule(threshold=0.9)
    assert ladder(8, 16, rule) == [1, 2, 4, 8] and ladder(8, 5, rule) == [1, 2, 4, 5] and ladder(8, 0, rule) == [1]
    assert ladder(8, 16, ExitRule()) == [8] and ladder(8, 3, ExitRule()) == [3]


def test_a_rule_that_never_exits_is_one_round_of_k_frames():
    values, usable, order = batch()
    res, toy = run(values, usable, order, ExitRule(), k_max=8)
    assert res.rounds_run == 1 and toy.calls == [8 + 8 + 5 + 0 + 8 + 8]
    assert res.exits == ["k_max"] * 6
    assert res.used[0] == order[0, :8].tolist() and res.used[2] == order[2, :5].tolist() and res.used[3] == []


def test_confident_windows_stop_early_and_the_others_go_on_to_k_max():
    values, usable, order = batch()
    res, toy = run(values, usable, order, ExitRule(threshold=0.97), k_max=8)
    assert res.exits[0] == "confident" and len(res.used[0]) == 1
    assert res.exits[1] == "k_max" and len(res.used[1]) == 8
    assert res.exits[3] == "k_max" and res.used[3] == []  # nothing usable: answered once, no frame embedded
    for b in range(6):  # prefixes of the window's own order
        assert res.used[b] == order[b, : len(res.used[b])].tolist()
    assert sum(toy.calls) == sum(len(u) for u in res.used), "every frame embedded once"
    assert res.rounds_run == 4  # 1, 2, 4, 8


def test_the_budget_stops_later_rounds_but_never_a_first_one():
    values, usable, order = batch()
    res, _ = run(values, usable, order, ExitRule(threshold=0.999), k_max=8, allowance=0)
    assert all(len(u) <= 1 for u in res.used) and all(len(u) == 1 for b, u in enumerate(res.used) if b != 3)
    assert res.exits.count("budget") >= 4
    first = sum(len(u) for u in res.used)  # 5 windows with usable frames, one frame each
    res3, _ = run(values, usable, order, ExitRule(threshold=0.999), k_max=8, allowance=first + 3)
    assert first < sum(len(u) for u in res3.used) <= first + 3 and "budget" in res3.exits
    assert res3.exits[0] in ("confident", "k_max", "budget")


def test_decisions_are_the_same_one_window_at_a_time_or_batched():
    rule = ExitRule(threshold=0.9)
    for seed in range(5):
        values, usable, order = batch(seed)
        together, _ = run(values, usable, order, rule)
        for b in range(len(order)):
            alone, _ = run(values, usable, order, rule, rows=[b])
            assert alone.exits[0] == together.exits[b] and alone.used[0] == together.used[b]
            np.testing.assert_allclose(alone.probs[0], together.probs[b])


def test_frames_another_window_embedded_cost_nothing():
    values, usable, order = batch()
    order[1] = order[0]  # two windows wanting the same frames (overlapping windows)
    usable[1] = usable[0]
    toy = Toy(values)
    toy.embedded.update((1, int(t)) for t in order[0, :8])
    res = run_rounds(
        order[:2], usable[:2], [8, 8], ExitRule(), cost=toy.cost, embed=toy.embed, head=toy.head, allowance=0
    )
    # window 1's frames are embedded already: it climbs to k_max on a budget of nothing, while
    # window 0 gets its first frame and stops there
    assert res.exits == ["budget", "k_max"] and len(res.used[1]) == 8 and len(res.used[0]) == 1
    assert sum(toy.calls) == 1


def test_a_budget_stops_fixed_k_windows_between_rounds_too():
    values, usable, order = batch()
    res, _ = run(values, usable, order, ExitRule(), k_max=8, allowance=5 + 4)
    # no exit rule: without the budget every window would take 8 frames in one round
    assert "budget" in res.exits and "confident" not in res.exits
    assert sum(len(u) for u in res.used) <= 5 + 4 and all(len(u) >= 1 for b, u in enumerate(res.used) if b != 3)
    assert ladder(8, 16, ExitRule(), budgeted=True) == [1, 2, 4, 8]
