"""The synthetic ultrasound-like generator and its source."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import SourceError
from sources.spec import parse_source
from sources.synthetic import CLASSES, SyntheticSource, make_clip, render_clip


def test_clip_shape_dtype_and_determinism_by_seed():
    a = make_clip("b_lines", 32, size=96, rng=np.random.default_rng(3))
    b = make_clip("b_lines", 32, size=96, rng=np.random.default_rng(3))
    c = make_clip("b_lines", 32, size=96, rng=np.random.default_rng(4))
    assert a.shape == (32, 96, 96) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_labels_by_name_or_index():
    by_name = make_clip("consolidation", 4, rng=np.random.default_rng(0))
    by_index = make_clip(CLASSES.index("consolidation"), 4, rng=np.random.default_rng(0))
    assert np.array_equal(by_name, by_index)
    for bad in ("pneumothorax", 7, -1, True):
        with pytest.raises(SourceError, match="synthetic class"):
            make_clip(bad, 4, rng=np.random.default_rng(0))


def test_fan_outside_is_black_and_tissue_inside_is_not():
    clip = make_clip(0, 8, size=128, rng=np.random.default_rng(0), empty_run_prob=0.0)
    assert (clip[:, -1, 0] == 0).all() and (clip[:, -1, -1] == 0).all()  # bottom corners outside the fan
    assert (clip[:, 20:40, 54:74].mean(axis=(1, 2)) > 20).all()  # chest wall under the probe


@pytest.mark.parametrize("label", CLASSES)
def test_class_pattern_shows_on_some_frames_only(label):
    # The region under the pleura (rows 44+, below the deepest pleura) is brighter where the class
    # pattern is visible than on the frames of the same clip without it.
    rng = np.random.default_rng(11)
    for _ in range(5):
        clip = render_clip(label, 32, size=128, rng=rng, empty_run_prob=0.0)
        assert 0 < clip.evidence.sum() < 32
        deep = clip.frames[:, 44:, :].astype(float).mean(axis=(1, 2))
        assert deep[clip.evidence].min() > deep[~clip.evidence].max()
        assert clip.label == label


def test_lost_contact_runs_are_all_zero_and_carry_no_evidence():
    rng = np.random.default_rng(5)
    for _ in range(10):
        clip = render_clip("a_lines", 32, size=64, rng=rng, empty_run_prob=1.0)
        assert 1 <= clip.empty.sum() <= 8
        assert (clip.frames[clip.empty] == 0).all()
        assert (clip.frames[~clip.empty].reshape(int((~clip.empty).sum()), -1).max(axis=1) > 0).all()
        assert not (clip.evidence & clip.empty).any() and clip.evidence.any()
    assert not render_clip("a_lines", 32, size=64, rng=rng, empty_run_prob=0.0).empty.any()


def test_rejects_degenerate_clips():
    with pytest.raises(SourceError):
        make_clip(0, 0, rng=np.random.default_rng(0))
    with pytest.raises(SourceError):
        make_clip(0, 4, size=8, rng=np.random.default_rng(0))


async def frames_of(source: SyntheticSource) -> list:
    async with source:
        return [frame async for frame in source]


async def test_source_is_deterministic_and_numbers_frames():
    a = await frames_of(SyntheticSource(frames=70, pacing=False, size=64, seed=9, clip_frames=32))
    b = await frames_of(SyntheticSource(frames=70, pacing=False, size=64, seed=9, clip_frames=32))
    assert [f.seq for f in a] == list(range(70))
    assert all(f.stream == "synthetic" and f.image.shape == (64, 64) for f in a)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    # The first clip is the same as make_clip with the same generator state.
    clip = make_clip(CLASSES[0], 32, size=64, rng=np.random.default_rng(9))
    assert all(np.array_equal(f.image, c) for f, c in zip(a[:32], clip))


async def test_source_cycles_labels_or_keeps_one():
    cycling = SyntheticSource(frames=10, clip_frames=4)
    assert [cycling.label_of(s) for s in (0, 3, 4, 8, 12)] == [
        "a_lines",
        "a_lines",
        "b_lines",
        "consolidation",
        "a_lines",
    ]
    fixed = SyntheticSource(label="b_lines", clip_frames=4)
    assert {fixed.label_of(s) for s in range(40)} == {"b_lines"}


async def test_source_colour_size_and_name():
    frames = await frames_of(SyntheticSource(frames=3, pacing=False, size=(48, 32), gray=False, name="demo"))
    assert [f.image.shape for f in frames] == [(32, 48, 3)] * 3
    assert all(f.stream == "demo" for f in frames)
    assert np.array_equal(frames[0].image[..., 0], frames[0].image[..., 2])


async def test_source_paces_at_its_frame_rate():
    frames = await frames_of(SyntheticSource(frames=6, fps=50.0, size=32))
    elapsed = [f.t_capture - frames[0].t_capture for f in frames]
    assert all(e >= i / 50 - 0.002 for i, e in enumerate(elapsed))


@pytest.mark.parametrize("kwargs", [{"fps": 0}, {"frames": -1}, {"clip_frames": 0}, {"name": "a/b"}, {"speed": 0}])
def test_source_rejects_bad_settings(kwargs):
    with pytest.raises(SourceError):
        SyntheticSource(**kwargs)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "synthetic:?fps=1e309",
            r"fps must be a number from 0.01 to 100000 \(frames/s\), got inf \(synthetic: source\)",
        ),
        ("synthetic:?fps=nan", r"fps must be a number from 0.01 to 100000"),
        ("synthetic:?frames=99999999999999999999", r"frames must be an integer from 0 to 1000000000000"),
        ("synthetic:?size=100000", r"clip_size must be an integer from 16 to 4096 \(pixels\), got 100000"),
    ],
)
def test_numbers_in_a_spec_are_bounded_with_one_line(spec, message):
    # issue #21: synthetic:?fps=1e309 was accepted (an infinite frame rate) where flags refuse it
    with pytest.raises(SourceError, match=message) as info:
        parse_source(spec)
    assert "\n" not in str(info.value)
    with pytest.raises(SourceError, match=r"speed must be a number > 0 and at most 1000"):
        parse_source("synthetic:", speed=1e309)
