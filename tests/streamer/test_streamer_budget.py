"""The elastic frame budget: a token bucket of frames per second, and k_max shrinking under load."""

from __future__ import annotations

import pytest

from streamer.budget import FrameBudget, ShrinkControl


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_bucket_refills_at_its_rate_holds_one_second_and_goes_into_debt():
    clock = Clock()
    budget = FrameBudget(30.0, clock=clock)
    assert budget.allowance() == 30
    budget.spend(40)  # first rounds are never refused: debt
    assert budget.allowance() == 0
    clock.t += 0.5  # +15: still 5 in debt
    assert budget.allowance() == 5
    clock.t += 10.0  # never more than one second's worth
    assert budget.allowance() == 30 and budget.spent == 40


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), float("inf")])
def test_a_budget_must_be_a_positive_finite_rate(rate):
    with pytest.raises(ValueError, match="budget must be a finite number of frames per second > 0"):
        FrameBudget(rate)


def test_k_max_halves_under_backlog_down_to_one_and_grows_back_when_calm():
    ctl = ShrinkControl(8, high=4, calm=2)
    assert [ctl.update(b) for b in (5, 4, 9, 9, 9)] == [4, 2, 1, 1, 1]
    assert [ctl.update(b) for b in (2, 0, 0, 0, 0, 0, 0, 0, 0)] == [1, 1, 2, 2, 4, 4, 8, 8, 8]
    assert ctl.shrinks == 3 and ctl.grows == 3
