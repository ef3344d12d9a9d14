"""Best-first orders: every sampler's order is a permutation with the usable frames first, and its
first j positions are the sampler's eval-mode picks for k = j (so one model serves every k)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import SamplerError
from core.order import by_priority, coarse_to_fine, coarse_to_fine_ranks, picks, put_first
from sampler import ADPSSampler, DASSampler, DPSSampler, FullSampler, RandomSampler, UniformSampler
from sampler.features import frame_features, frame_validity

T = 16


def window(batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows with some padding (invalid) and some empty (lost-contact) frames."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, T, 1, 20, 20, generator=g)
    valid = torch.ones(batch, T, dtype=torch.bool)
    valid[1, 11:] = False  # a padded final window
    x[2, 3:6] = 0.0  # lost contact: empty frames
    return x, valid


def samplers(k: int = 6) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "full": FullSampler(num_frames=T),
        "uniform": UniformSampler(num_frames=T, k=k),
        "uniform-nested": UniformSampler(num_frames=T, k=k, nested=True),
        "dps": DPSSampler(num_frames=T, k=k),
        "adps": ADPSSampler(num_frames=T, k=k, feature_size=16),
        "das": DASSampler(num_frames=T, k=k, feature_size=16),
        "das-segments": DASSampler(num_frames=T, k=k, feature_size=16, selection="segments"),
    }


def test_coarse_to_fine_prefixes_are_evenly_spaced_and_refine_each_other():
    ranks = coarse_to_fine_ranks(32)
    assert sorted(ranks.tolist()) == list(range(32))
    assert ranks[0] == 16
    assert sorted(ranks[:3].tolist()) == [8, 16, 24]
    assert sorted(ranks[:7].tolist()) == [4, 8, 12, 16, 20, 24, 28]
    for n in range(1, 70):  # every length gives a permutation
        assert sorted(coarse_to_fine_ranks(n).tolist()) == list(range(n))
    usable = np.ones((1, 8), bool)
    usable[0, [2, 5]] = False
    order = coarse_to_fine(usable)[0]
    assert set(order[:6].tolist()) == {0, 1, 3, 4, 6, 7} and order[6:].tolist() == [2, 5]


def test_by_priority_puts_usable_then_higher_scores_first_and_breaks_ties_by_time():
    order = by_priority(np.array([[1.0, 3.0, 3.0, 0.0, 5.0]]), np.array([[1, 1, 1, 0, 1]], bool))
    assert order.tolist() == [[4, 1, 2, 0, 3]]
    first = np.array([[0, 0, 0, 0, 1]], bool)
    assert put_first(np.array([[0, 1, 2, 3, 4]]), first).tolist() == [[4, 0, 1, 2, 3]]
    assert picks(order, 2).tolist() == [[1, 4]]


@pytest.mark.parametrize("name", list(samplers()))
def test_order_is_a_permutation_with_usable_frames_first_and_prefixes_are_the_picks(name):
    sampler = samplers()[name].eval()
    x, valid = window()
    usable = frame_validity(x, valid)
    with torch.no_grad():
        order = sampler.order(x, valid)
        assert order.shape == (3, T) and order.dtype == torch.long
        for b in range(3):
            assert sorted(order[b].tolist()) == list(range(T))
            n = int(usable[b].sum())
            assert usable[b, order[b, :n]].all(), "usable frames come first"
        nested = name != "uniform"  # the classic Uniform picks the middles of k segments: not nested
        for j in range(1, sampler.k + 1) if nested else [sampler.k]:
            got = sampler.select(x, valid, k=j).indices
            assert torch.equal(got, order[:, :j].sort(dim=1).values), f"k={j}"
        assert torch.equal(sampler.select(x, valid).indices, order[:, : sampler.k].sort(dim=1).values)


def test_random_order_prefixes_are_the_picks_of_the_same_draw():
    x, valid = window()
    for j in (1, 3, 6):
        order = RandomSampler(num_frames=T, k=6, seed=4).order(x, valid)
        got = RandomSampler(num_frames=T, k=6, seed=4).select(x, valid, k=j).indices
        assert torch.equal(got, order[:, :j].sort(dim=1).values)
    a, b = RandomSampler(num_frames=T, k=6, seed=4), RandomSampler(num_frames=T, k=6, seed=5)
    assert not torch.equal(a.order(x, valid), b.order(x, valid))


def test_das_picks_are_nested_and_follow_the_frame_score():
    das = samplers()["das"].eval()
    x, valid = window()
    with torch.no_grad():
        base = das.attention(x, valid).base
        order = das.order(x, valid)
        prev: set[int] = set()
        for j in range(1, das.k + 1):
            now = set(das.select(x, valid, k=j).indices[0].tolist())
            assert prev < now
            prev = now
    scores = base[0, order[0, :T]]
    assert (scores[:-1] >= scores[1:]).all(), "row 0 has every frame usable: descending scores"


@pytest.mark.parametrize("name", ["das", "adps"])
def test_order_from_features_on_arrival_equals_order_from_frames(name):
    sampler = samplers()[name].eval()
    x, valid = window()
    raw = frame_features(x, 16)
    with torch.no_grad():
        assert torch.equal(sampler.order_features(raw, frame_validity(x, valid)), sampler.order(x, valid))


@pytest.mark.parametrize("name", ["das", "dps", "adps", "das-segments", "uniform-nested", "full"])
def test_training_picks_for_a_smaller_k_are_distinct_and_carry_a_gradient(name):
    sampler = samplers()[name].train()
    x, valid = window()
    x.requires_grad_(True)
    out = sampler(x, valid, k=3)
    assert out.indices.shape == (3, 3) and out.frames.shape == (3, 3, 1, 20, 20)
    for row in out.indices.tolist():
        assert len(set(row)) == 3 and row == sorted(row)
    if any(p.requires_grad for p in sampler.parameters()):
        out.frames.sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in sampler.parameters())


@pytest.mark.parametrize("k", [0, 7, -1, True])
def test_k_outside_one_to_the_samplers_k_is_refused(k):
    x, valid = window()
    with pytest.raises(SamplerError, match="k must be between 1 and the sampler's k=6"):
        samplers()["das"].eval().select(x, valid, k=k)
