"""The cross-validation protocol: folds and groups, paired bootstrap, video-level aggregation,
corruptions, and ``compare --folds 2`` through the CLI on generated videos."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from training_help import compare_argv, write_config, write_npz, write_video_index

from core.errors import ConfigError, DataError
from core.windows import window_bounds
from das_stream.cli import main
from sources.frame import Frame
from streamer.window import Windower
from training.clips import cut_windows
from training.corruptions import KINDS, StreamCorruption, blur, corrupt_videos, frozen, gain, lost_contact, noise
from training.metrics import Scores
from training.protocol.folds import fold_splits, groups_from_regex
from training.protocol.paired import bootstrap_mean_ci, paired_diff
from training.report import RunResult
from training.video_eval import aggregate_video_probs

# --- folds -----------------------------------------------------------------------------------


def _index(n_groups: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for g in range(n_groups):
        for _ in range(int(rng.integers(1, 4))):
            labels.append(g % 3)
            groups.append(f"patient{g}")
    return np.array(labels), np.array(groups, dtype=object)


def test_folds_partition_keep_groups_apart_and_hold_every_class():
    labels, groups = _index()
    splits = fold_splits(labels, folds=3, seed=0, groups=groups, val_fraction=0.25)
    tests = np.concatenate([te for _, _, te in splits])
    assert sorted(tests.tolist()) == list(range(len(labels)))  # every sample tested exactly once
    for tr, va, te in splits:
        assert len(set(tr) | set(va) | set(te)) == len(tr) + len(va) + len(te)  # disjoint
        parts = [set(groups[p]) for p in (tr, va, te)]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        for p in (tr, te):
            assert set(labels[p]) == {0, 1, 2}


def test_same_seed_same_folds_other_seed_other_folds():
    labels, groups = _index()
    a = fold_splits(labels, folds=3, seed=4, groups=groups)
    b = fold_splits(labels, folds=3, seed=4, groups=groups)
    c = fold_splits(labels, folds=3, seed=5, groups=groups)
    assert all(np.array_equal(x, y) for fa, fb in zip(a, b) for x, y in zip(fa, fb))
    assert any(not np.array_equal(fa[2], fc[2]) for fa, fc in zip(a, c))


def test_too_few_groups_is_a_data_error():
    with pytest.raises(DataError, match="cannot make 5 folds from 3 groups"):
        fold_splits(np.array([0, 1, 0, 1]), folds=5, seed=0, groups=np.array(["a", "a", "b", "c"]))


def test_group_regex_takes_the_capture_group_and_leaves_others_alone():
    names = ["v/Reg_pat1Image_1.mpeg", "v/Reg_pat1Image_2.mpeg", "v/Reg_pat2Image_1.mpeg", "v/Cov_other.mp4"]
    assert groups_from_regex(names, r"(pat\d+)").tolist() == ["pat1", "pat1", "pat2", "<v/Cov_other.mp4>"]
    with pytest.raises(DataError, match="group_regex"):
        groups_from_regex(names, "(")


# --- paired bootstrap ------------------------------------------------------------------------


def test_bootstrap_interval_matches_the_hand_computed_one():
    # Resampling [0, 0, 0, 1] with replacement: the mean is j/4 with j ~ Binomial(4, 1/4).
    # P(j = 0) = 0.316 > 2.5 %, so the lower bound is 0; P(j >= 3) = 0.0508 > 2.5 % and
    # P(j = 4) = 0.0039 < 2.5 %, so the upper bound is 3/4.
    mean, low, high = bootstrap_mean_ci([0.0, 0.0, 0.0, 1.0], seed=0)
    assert (mean, low, high) == (0.25, 0.0, 0.75)
    assert bootstrap_mean_ci([0.1, 0.1], seed=0) == (0.1, 0.1, 0.1)
    assert np.isnan(bootstrap_mean_ci([0.3])[1])


def _result(method: str, keep: float, fold: int, seed: int, auc: float) -> RunResult:
    s = Scores(auc=auc, acc=50.0)
    return RunResult("d", method, keep, seed, 1, 4, s, s, 0.0, 1, 1, 1.0, 0.0, "cpu", fold=fold)


def test_paired_difference_pairs_by_fold_and_seed():
    results = [_result("das", 0.5, f, 0, 0.7 + 0.1 * f) for f in range(2)]
    results += [_result("uniform", 0.5, f, 0, 0.6 + 0.1 * f) for f in range(2)]
    results += [_result("uniform", 0.25, 0, 0, 0.0), _result("full", 1.0, 0, 0, 0.9)]
    d = paired_diff(results, "das", "uniform", 0.5)
    assert d.pairs == 2 and d.wins == 2 and d.diff_mean == pytest.approx(0.1)
    assert d.ci_low == pytest.approx(0.1) and d.ci_high == pytest.approx(0.1)
    full = paired_diff(results, "das", "full", 0.5)
    assert full.pairs == 1 and full.diff_mean == pytest.approx(-0.2)


# --- video-level aggregation -----------------------------------------------------------------


@pytest.mark.parametrize(("n", "t", "s"), [(10, 4, 4), (10, 4, 2), (11, 4, 6), (3, 4, 2), (8, 4, 4), (9, 4, 3)])
def test_windows_are_cut_as_the_runtime_cuts_them(n, t, s):
    w = Windower(stream="v", num_frames=t, stride=s)
    runtime = []
    for i in range(n):
        win = w.push(Frame(stream="v", seq=i, t_capture=0.0, image=np.zeros((1, 1), np.uint8)))
        if win is not None:
            runtime.append(win.seqs)
    last = w.flush()
    if last is not None and last.frames:
        runtime.append(last.seqs)
    assert [tuple(range(a, b)) for a, b in window_bounds(n, t, s)] == runtime


def test_cut_windows_pads_the_last_partial_window():
    frames = np.arange(6, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    x, valid = cut_windows(frames, 4, 4)
    assert x.shape == (2, 4, 2, 2)
    assert valid.tolist() == [[True] * 4, [True, True, False, False]]
    assert x[1, :, 0, 0].tolist() == [4, 5, 0, 0]


def test_video_probabilities_are_the_mean_of_their_windows():
    window_probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.4, 0.6], [0.0, 1.0]])
    owner = np.array([0, 0, 1, 1, 1])
    video = aggregate_video_probs(window_probs, owner)
    # hand: video 0 = ((0.9 + 0.5) / 2, (0.1 + 0.5) / 2); video 1 = (0.6 / 3, 2.4 / 3)
    np.testing.assert_allclose(video, [[0.7, 0.3], [0.2, 0.8]])


# --- corruptions -----------------------------------------------------------------------------


def _clip() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(60, 200, (12, 16, 16)).astype(np.uint8)


def test_each_corruption_changes_only_its_run():
    clip = _clip()
    for fn in (lost_contact, frozen, gain, noise, blur):
        x = clip.copy()
        fn(x, 3, 7, np.random.default_rng(0))
        assert np.array_equal(x[:3], clip[:3]) and np.array_equal(x[7:], clip[7:]), fn.__name__
        assert not np.array_equal(x[4:7], clip[4:7]), fn.__name__
    x = clip.copy()
    lost_contact(x, 3, 7, np.random.default_rng(0))
    assert x[3:7].max() <= 4
    x = clip.copy()
    frozen(x, 3, 7, np.random.default_rng(0))
    assert all(np.array_equal(x[i], clip[3]) for i in range(3, 7))
    x = clip.copy()
    blur(x, 3, 7, np.random.default_rng(0))
    assert x[3:7].astype(float).std() < clip[3:7].astype(float).std()  # blur smooths


def test_stream_corruption_is_seeded_and_leaves_the_input_alone():
    clip = _clip()
    spec = StreamCorruption(rate=20.0, min_run=1, max_run=3)
    a = spec(clip, np.random.default_rng(5))
    b = spec(clip, np.random.default_rng(5))
    c = spec(clip, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, clip)
    assert np.array_equal(clip, _clip())
    # per-video seeds: the same video gets the same corruption whatever else is in the list
    one = corrupt_videos([clip], spec, seed=3, ids=[7])[0]
    two = corrupt_videos([clip[:5], clip], spec, seed=3, ids=[2, 7])[1]
    assert np.array_equal(one, two)
    assert np.array_equal(StreamCorruption(rate=0.0)(clip, np.random.default_rng(0)), clip)


def test_corruption_options_are_checked():
    assert StreamCorruption.from_options({"kinds": "frozen,blur"}).kinds == ("frozen", "blur")
    with pytest.raises(ConfigError, match="kinds"):
        StreamCorruption.from_options({"kinds": ["smoke"]})
    with pytest.raises(ConfigError, match="unknown key"):
        StreamCorruption.from_options({"rat": 1})
    assert set(KINDS) == {"lost_contact", "frozen", "gain", "noise", "blur"}


# --- compare --folds through the CLI -----------------------------------------------------------


def test_compare_two_folds_video_level_with_groups_and_corruption(tmp_path, capsys):
    index = write_video_index(tmp_path)
    config = write_config(
        tmp_path / "v.yaml",
        {
            "kind": "videos",
            "path": str(index),
            "label_column": "label",
            "classes": ["dark", "bright"],
            "fps": 10,
            "size": 16,
            "num_frames": 4,
            "group_regex": r"(pat\d+)",
            "train_windows": "random",
            "window_stride": 2,
            "corruption": "test",
            "corruption_options": {"rate": 10},
            "cache_dir": str(tmp_path / "cache"),
        },
    )
    out = tmp_path / "cv"
    args = compare_argv(config, out, "full,uniform,das", folds=2, sets=("model.backbone=tiny_cnn",))
    assert main(args) == 0
    runs = sorted(str(p.relative_to(out)) for p in out.glob("fold*/*") if p.is_dir())
    assert runs == [
        f"fold{f}/{r}" for f in (0, 1) for r in ("das-keep0.5-seed0", "full-keep1-seed0", "uniform-keep0.5-seed0")
    ]
    r = json.loads((out / "fold0" / "das-keep0.5-seed0" / "result.json").read_text())
    assert r["fold"] == 0 and r["window_test"] is not None
    with (out / "fold0" / "das-keep0.5-seed0" / "video-predictions-test.csv").open() as f:
        videos = list(csv.DictReader(f))
    tested = {v["video"] for v in videos}
    assert len(tested) == 6 and all(int(v["windows"]) >= 3 for v in videos)  # 10-21 frames, T 4, S 2
    with (out / "fold1" / "das-keep0.5-seed0" / "video-predictions-test.csv").open() as f:
        assert tested.isdisjoint({v["video"] for v in csv.DictReader(f)})
    patients = {v.split("_")[1] for v in tested}
    assert len(patients) == 3  # whole patients: both of a patient's videos are tested together
    with (out / "tiny.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[-3:] == ["diff_vs_uniform", "diff_ci_low", "diff_ci_high"]
    das = next(row for row in rows if row["method"] == "das")
    assert das["runs"] == "2" and das["diff_vs_uniform"] != ""
    with (out / "tiny-paired.csv").open() as f:
        paired = list(csv.DictReader(f))
    assert {(p["method"], p["baseline"]) for p in paired} >= {("das", "uniform"), ("das", "full")}
    assert (out / "tiny-corrupted.csv").is_file() and (out / "tiny-corrupted.md").is_file()
    assert (out / "fold1" / "uniform-keep0.5-seed0" / "result-corrupted.json").is_file()
    assert "Paired differences" in (out / "tiny.md").read_text()

    assert main([*args, "--resume"]) == 0
    assert (out / "compare.log").read_text().count("skipped (--resume)") == 6


def test_compare_folds_on_medmnist_keeps_the_official_test_split(tmp_path):
    npz = write_npz(tmp_path / "m.npz", depth=6, size=16)
    config = write_config(
        tmp_path / "m.yaml",
        {"kind": "medmnist3d", "path": str(npz), "classes": ["a", "b"], "fold_test": "official", "corruption": "test"},
    )
    out = tmp_path / "cv"
    assert main(compare_argv(config, out, "uniform,das", folds=2, sets=("model.backbone=tiny_cnn",))) == 0
    for f in (0, 1):
        r = json.loads((out / f"fold{f}" / "das-keep0.5-seed0" / "result.json").read_text())
        assert r["fold"] == f
    # the official test split (8 volumes) is every fold's test set; train + val (24) are folded
    for f in (0, 1):
        log = (out / f"fold{f}" / "das-keep0.5-seed0" / "train.log").read_text()
        assert "clips train/val/test=12/12/8" in log
        assert (out / f"fold{f}" / "das-keep0.5-seed0" / "result-corrupted.json").is_file()
    assert "official test split kept" in (out / "tiny.md").read_text()


# --- training windows and config keys ------------------------------------------------------


def test_random_training_windows_come_from_anywhere_and_repeat_with_the_seed():
    from training.protocol.crossval import RandomWindowSet

    video = (np.arange(40, dtype=np.uint8)[:, None, None] + 10) * np.ones((1, 4, 4), np.uint8)
    short = np.full((3, 4, 4), 100, np.uint8)

    def draws(seed, corruption=None):
        ds = RandomWindowSet([video, short], np.array([0, 1]), ("a", "b"), 8, seed=seed, corruption=corruption)
        return [ds[i % 2] for i in range(40)]

    a, b = draws(0), draws(0)
    assert all(torch_equal(x[0], y[0]) for x, y in zip(a, b))
    starts = {int(x[0][0, 0, 0, 0]) - 10 for x in a[::2]}
    assert len(starts) > 5 and max(starts) > 8  # not only the first T frames
    for x, valid, _ in a[::2]:  # consecutive frames, all real
        values = x[:, 0, 0, 0].numpy().astype(int)
        assert (np.diff(values) == 1).all() and bool(valid.all())
    x, valid, label = a[1]  # the 3-frame video: padded and masked
    assert label == 1 and valid.tolist() == [True] * 3 + [False] * 5 and int(x[3:].max()) == 0
    corrupted = draws(0, StreamCorruption(rate=50.0, kinds=("lost_contact",)))
    assert any(int(x[0][:, 0].amin()) <= 4 for x in corrupted[::2])  # some black runs in the long video


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("data.folds", "1", "must be 0 \\(fixed split\\) or >= 2"),
        ("data.train_windows", "middle", "first, random or all"),
        ("data.corruption", "train", "none, test or both"),
        ("data.fold_test", "mine", "merge or official"),
    ],
)
def test_bad_protocol_settings_are_config_errors(tmp_path, key, value, message):
    from training.config import load_config

    npz = write_npz(tmp_path / "m.npz")
    config = write_config(tmp_path / "m.yaml", {"kind": "medmnist3d", "path": str(npz)})
    with pytest.raises(ConfigError, match=message):
        load_config(config, overrides=[f"{key}={value}"])
