"""Samplers on real tensors: shapes, determinism, padding, gradients and bad input."""

from __future__ import annotations

import pytest
import torch

from sampler import ADPSSampler, DASSampler, DPSSampler, FullSampler, RandomSampler, SamplerError, UniformSampler

LEARNED = (DASSampler, DPSSampler, ADPSSampler)
PICKING = (DASSampler, DPSSampler, ADPSSampler, UniformSampler, RandomSampler)


def window(b: int, t: int, *, c: int = 1, size: int = 24, seed: int = 0) -> torch.Tensor:
    """Frames with a different bright square in each, so the frames differ in every feature."""
    gen = torch.Generator().manual_seed(seed)
    x = 0.2 * torch.rand(b, t, c, size, size, generator=gen)
    for i in range(b):
        for j in range(t):
            side = int(torch.randint(3, size // 2, (1,), generator=gen))
            top, left = (int(v) for v in torch.randint(0, size - side, (2,), generator=gen))
            x[i, j, :, top : top + side, left : left + side] += 0.7 * torch.rand(1, generator=gen).item()
    return x.clamp(0, 1)


@pytest.mark.parametrize("cls", PICKING)
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("training", [True, False])
def test_shapes_and_gathered_frames(cls, b, training):
    t, k = 13, 4  # T not divisible by k
    x = window(b, t, c=3)
    torch.manual_seed(1)
    sampler = cls(num_frames=t, k=k).train(training)
    out = sampler(x)
    assert out.matrix.shape == (b, k, t) and out.matrix.dtype == torch.float32
    assert out.indices.shape == (b, k) and out.indices.dtype == torch.long
    assert out.frames.shape == (b, k, 3, 24, 24)
    assert torch.equal(out.indices, out.indices.sort(dim=1).values)
    assert all(len(set(row)) == k for row in out.indices.tolist())  # distinct picks
    rows = torch.arange(b)[:, None]
    assert torch.allclose(out.frames, x[rows, out.indices])
    assert torch.equal(out.matrix.argmax(dim=2), out.indices)  # rows reordered with the indices


def test_full_sampler_keeps_every_frame_in_order():
    x = window(2, 7)
    out = FullSampler(num_frames=7)(x)
    assert out.indices.tolist() == [list(range(7))] * 2
    assert torch.equal(out.frames, x)
    with pytest.raises(SamplerError, match="k must equal num_frames=7"):
        FullSampler(num_frames=7, k=3)


def test_uniform_picks_segment_middles():
    out = UniformSampler(num_frames=32, k=8)(window(1, 32))
    assert out.indices.tolist() == [[2, 6, 10, 14, 18, 22, 26, 30]]
    out = UniformSampler(num_frames=13, k=4)(window(1, 13))
    assert out.indices.tolist() == [[1, 4, 8, 11]]


def test_random_sampler_is_seedable_and_covers_all_frames():
    x = window(4, 10)
    a = RandomSampler(num_frames=10, k=3, seed=7)
    b = RandomSampler(num_frames=10, k=3, seed=7)
    first = [a.select(x).indices for _ in range(20)]
    assert all(torch.equal(p, q) for p, q in zip(first, (b.select(x).indices for _ in range(20))))
    seen = torch.cat(first).flatten().bincount(minlength=10)
    assert (seen > 0).all()  # 240 picks reach every position
    assert not all(torch.equal(first[0], p) for p in first[1:])


@pytest.mark.parametrize("cls", LEARNED)
def test_eval_mode_is_deterministic(cls):
    x = window(3, 16, seed=2)
    sampler = cls(num_frames=16, k=5).eval()
    first = sampler(x)
    second = sampler(x)
    assert torch.equal(first.indices, second.indices)
    assert torch.equal(first.matrix, second.matrix)


def test_das_eval_picks_the_top_k_of_the_base_attention():
    x = window(3, 16, seed=3)
    torch.manual_seed(0)
    das = DASSampler(num_frames=16, k=5).eval()
    out = das(x)
    expected = das.attention(x).base.topk(5, dim=1).indices.sort(dim=1).values
    assert torch.equal(out.indices, expected)


def test_paper_exact_repeats_one_frame_in_eval_while_default_does_not():
    x = window(2, 12, seed=4)
    torch.manual_seed(0)
    default = DASSampler(num_frames=12, k=4).eval()
    literal = DASSampler(num_frames=12, k=4, paper_exact=True).eval()
    literal.load_state_dict(default.state_dict())  # same weights, only the selection rule differs
    repeated = literal(x).indices
    distinct = default(x).indices
    assert all(len(set(row)) == 1 for row in repeated.tolist())
    assert all(len(set(row)) == 4 for row in distinct.tolist())
    assert torch.equal(repeated[:, 0], default.attention(x).base.argmax(dim=1))


def test_das_temperature_stays_in_its_band():
    torch.manual_seed(0)
    das = DASSampler(num_frames=8, k=2, tau0=2.0)
    with torch.no_grad():  # push the temperature MLP to both extremes
        for bias in (-1e3, 1e3):
            das.temperature[-1].bias.fill_(bias)
            tau = das.attention(window(2, 8)).tau
            assert ((tau >= 1.0) & (tau <= 3.0)).all()


@pytest.mark.parametrize("cls", LEARNED)
def test_backward_reaches_every_parameter(cls):
    torch.manual_seed(0)
    x = window(4, 10, seed=5)
    sampler = cls(num_frames=10, k=3).train()
    target = torch.randn(4, 3, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    loss = ((sampler(x).frames - target) ** 2).mean()
    loss.backward()
    for name, param in sampler.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", PICKING)
@pytest.mark.parametrize("training", [True, False])
def test_padded_frames_are_avoided_when_enough_real_frames_exist(cls, training):
    t, k = 12, 4
    x = window(2, t, seed=6)
    valid = torch.ones(2, t, dtype=torch.bool)
    valid[0, 6:] = False  # a short clip: 6 real frames, then padding (zeros, as the paper pads)
    x[0, 6:] = 0
    valid[1, ::2] = False  # frames flagged invalid but not empty
    torch.manual_seed(0)
    sampler = cls(num_frames=t, k=k).train(training)
    for _ in range(5):
        out = sampler(x, valid)
        assert valid.gather(1, out.indices).all()


@pytest.mark.parametrize("cls", PICKING)
def test_padded_frames_fill_up_when_too_few_real_frames_exist(cls):
    x = window(1, 10, seed=7)
    x[0, 2:] = 0  # only two real frames: k=4 must include both and two padded ones
    out = cls(num_frames=10, k=4).eval()(x)
    assert out.indices[0, :2].tolist() == [0, 1]
    assert len(set(out.indices[0].tolist())) == 4


def test_empty_frames_count_as_padding_without_a_mask():
    x = window(1, 10, seed=8)
    x[0, 3:] = 0
    torch.manual_seed(0)
    out = DASSampler(num_frames=10, k=3).train()(x)
    assert out.indices.tolist() == [[0, 1, 2]]


def test_select_accepts_a_small_uint8_copy_of_the_window():
    torch.manual_seed(0)
    das = DASSampler(num_frames=8, k=3, feature_size=16).eval()
    big = window(2, 8, size=64, seed=9)
    small = torch.nn.functional.interpolate(big.flatten(0, 1), size=(16, 16), mode="area").view(2, 8, 1, 16, 16)
    out_big = das.select(big)
    out_small = das.select((small * 255).round().to(torch.uint8))
    assert out_small.frames is None
    assert torch.equal(out_big.indices, out_small.indices)


@pytest.mark.parametrize("cls", PICKING + (FullSampler,))
def test_bad_input_raises_a_clear_value_error(cls):
    k = 12 if cls is FullSampler else 3
    sampler = cls(num_frames=12, k=k)
    with pytest.raises(ValueError, match=r"rank 5"):
        sampler(torch.rand(12, 1, 8, 8))
    with pytest.raises(ValueError, match=r"T=10 frames but the sampler was built for num_frames=12"):
        sampler(torch.rand(1, 10, 1, 8, 8))
    nan = torch.rand(1, 12, 1, 8, 8)
    nan[0, 3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sampler(nan)
    with pytest.raises(ValueError, match=r"valid mask must have shape"):
        sampler(torch.rand(1, 12, 1, 8, 8), torch.ones(1, 11, dtype=torch.bool))


@pytest.mark.parametrize("cls", PICKING)
def test_k_larger_than_t_is_refused(cls):
    with pytest.raises(ValueError, match=r"k must be between 1 and num_frames=8, got k=9"):
        cls(num_frames=8, k=9)


@pytest.mark.parametrize("padded", [0, 5, 10])
def test_das_inference_shortcut_picks_what_the_row_by_row_selection_picks(padded):
    """Without gradients, eval-mode DAS takes one top-k instead of k masked argmax passes."""
    t, k = 16, 8
    x = window(4, t, seed=3)
    valid = torch.ones(4, t, dtype=torch.bool)
    valid[:, t - padded :] = False
    torch.manual_seed(2)
    sampler = DASSampler(num_frames=t, k=k).eval()
    with torch.no_grad():
        fast = sampler.select(x, valid)
    slow = sampler.select(x, valid)  # parameters need gradients: the row-by-row path
    assert slow.matrix.requires_grad and not fast.matrix.requires_grad
    assert torch.equal(fast.indices, slow.indices)
    assert torch.allclose(fast.matrix, slow.matrix.detach(), atol=1e-6)  # hard + soft - soft: rounding
    assert all(len(set(row)) == k for row in fast.indices.tolist())
    if padded <= t - k:
        assert (fast.indices < t - padded).all()  # enough real frames: no padding picked


def _segments(t: int, k: int) -> list[list[int]]:
    """The frames of each of k equal segments of T, by hand: frame i belongs to floor(i k / T)."""
    return [[i for i in range(t) if (i * k) // t == j] for j in range(k)]


def test_segments_by_hand():
    assert _segments(13, 4) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    assert _segments(32, 4)[1] == list(range(8, 16))


@pytest.mark.parametrize("t,k", [(16, 4), (13, 4), (32, 8), (9, 9)])
def test_das_segments_eval_picks_the_best_frame_of_each_segment(t, k):
    x = window(3, t, seed=11)
    torch.manual_seed(0)
    das = DASSampler(num_frames=t, k=k, selection="segments").eval()
    out = das(x)
    base = das.attention(x).base
    expected = [[max(seg, key=lambda i: base[b, i].item()) for seg in _segments(t, k)] for b in range(3)]
    assert out.indices.tolist() == expected
    rows = torch.arange(3)[:, None]
    assert torch.allclose(out.frames, x[rows, out.indices])
    # the same weights with the default rule pick the top k of a_base anywhere in the window
    top = DASSampler(num_frames=t, k=k).eval()
    top.load_state_dict(das.state_dict())
    assert torch.equal(top(x).indices, base.topk(k, dim=1).indices.sort(dim=1).values)


def test_das_segments_train_mode_keeps_one_pick_per_segment_and_varies_within():
    t, k = 16, 4
    x = window(2, t, seed=12)
    torch.manual_seed(0)
    das = DASSampler(num_frames=t, k=k, selection="segments").train()
    seen = set()
    for _ in range(30):
        out = das(x)
        for row in out.indices.tolist():
            assert [(i * k) // t for i in row] == list(range(k))
            seen.add(tuple(row))
    assert len(seen) > 3  # Gumbel noise explores within the segments


def test_das_segments_avoid_invalid_frames_within_a_segment_and_train_end_to_end():
    t, k = 12, 3
    x = window(2, t, seed=13)
    valid = torch.ones(2, t, dtype=torch.bool)
    valid[:, [0, 1, 2, 4, 5, 6, 7]] = False  # segment 0 keeps frame 3, segment 1 nothing valid, segment 2 all
    x[0, [0, 1, 2]] = 0  # lost contact: black frames
    torch.manual_seed(0)
    das = DASSampler(num_frames=t, k=k, selection="segments")
    for training in (True, False):
        das.train(training)
        for _ in range(5):
            idx = das(x, valid).indices
            assert idx[:, 0].tolist() == [3, 3]  # the one valid frame of segment 0
            assert all(4 <= i <= 7 for i in idx[:, 1].tolist())  # no valid frame: still segment 1's
            assert valid.gather(1, idx[:, 2:]).all()
    das.train()
    target = torch.randn(2, k, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    ((das(x, valid).frames - target) ** 2).mean().backward()
    assert das.base[0].weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in das.parameters() if p.grad is not None)


def test_das_segments_from_features_and_misuse():
    from sampler.features import frame_features, frame_validity

    x = window(2, 16, seed=14)
    torch.manual_seed(0)
    das = DASSampler(num_frames=16, k=4, selection="segments", feature_size=24).eval()
    raw = frame_features(x, 24)
    assert torch.equal(das.select_features(raw, frame_validity(x)).indices, das(x).indices)
    with pytest.raises(SamplerError, match="selection must be top_k or segments"):
        DASSampler(num_frames=16, k=4, selection="stratified")
    with pytest.raises(SamplerError, match="paper_exact"):
        DASSampler(num_frames=16, k=4, selection="segments", paper_exact=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda t, k: DASSampler(num_frames=t, k=k),
        lambda t, k: DASSampler(num_frames=t, k=k, selection="segments"),
        lambda t, k: DPSSampler(num_frames=t, k=k),
        lambda t, k: ADPSSampler(num_frames=t, k=k, feature_size=24),
    ],
)
def test_noise_scale_zero_makes_training_picks_the_inference_picks(make):
    t, k = 16, 4
    x = window(3, t, seed=21)
    torch.manual_seed(0)
    sampler = make(t, k)
    assert sampler.noise_scale == 1.0
    inference = sampler.eval()(x).indices
    sampler.train()
    noisy = {tuple(sampler(x).indices.flatten().tolist()) for _ in range(20)}
    assert len(noisy) > 1  # full noise explores
    sampler.noise_scale = 0.0
    for _ in range(3):
        out = sampler(x)
        assert torch.equal(out.indices, inference)
        assert out.matrix.requires_grad  # the relaxation still carries a gradient
    sampler.noise_scale = 0.25  # a little noise: picks stay closer to the inference picks than under full noise
    near = sum(int((sampler(x).indices == inference).sum()) for _ in range(40))
    sampler.noise_scale = 1.0
    far = sum(int((sampler(x).indices == inference).sum()) for _ in range(40))
    assert near > far
