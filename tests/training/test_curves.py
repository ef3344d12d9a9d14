"""Curves and the early exit: scores at every prefix of a sampler's order, the calibrated exit
rule, and the per-run ``curve.json`` of ``compare --folds``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from training_help import compare_argv, write_config, write_npz

from core.errors import ConfigError
from core.exit import NEVER, ExitRule, exit_round, frames_used, rounds
from sampler.model import ModelConfig, build_model
from training.clips import ClipSet
from training.exits import PrefixProbs, Windows, calibrate, fixed_k, operating_point, prefix_probs


def test_rounds_double_up_to_k_max():
    assert rounds(1) == (1,) and rounds(2) == (1, 2) and rounds(8) == (1, 2, 4, 8) and rounds(12) == (1, 2, 4, 8, 12)


def test_exit_rule_settles_on_the_top_probability_and_refuses_nonsense():
    rule = ExitRule(threshold=0.8)
    assert rule.settled(np.array([[0.85, 0.15], [0.6, 0.4]])).tolist() == [True, False]
    assert not ExitRule().early and rule.early
    assert ExitRule.from_dict(None) == ExitRule() and ExitRule.from_dict(rule.to_dict()) == rule
    for bad in (0.0, -1.0, float("nan"), float("inf"), "0.5"):
        with pytest.raises(ConfigError, match="exit threshold"):
            ExitRule(threshold=bad)
    with pytest.raises(ConfigError, match="kind"):
        ExitRule(kind="entropy")


def test_each_window_exits_at_its_first_settled_round_and_never_uses_more_frames_than_it_has():
    probs = np.array(
        [
            [[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]],  # settled at once
            [[0.5, 0.5], [0.7, 0.3], [0.95, 0.05]],  # at the last round
            [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]],  # never: k_max
        ]
    )
    at = exit_round(probs, ExitRule(threshold=0.9))
    assert at.tolist() == [0, 2, 2]
    assert frames_used((1, 2, 4), at, np.array([4, 4, 3])).tolist() == [1, 4, 3]
    assert exit_round(probs, ExitRule()).tolist() == [2, 2, 2]


def constructed_validation() -> tuple[PrefixProbs, Windows]:
    """Eight one-window videos, two classes. After one frame the four 'easy' windows are right
    and sure (0.9), the four 'hard' ones unsure and wrong-leaning (0.55 for the wrong class);
    after two frames every window is right with 0.8; after four, right with 0.85."""
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    easy = np.arange(8) < 4
    probs = np.zeros((8, 3, 2))
    for w, y in enumerate(labels):
        first = 0.9 if easy[w] else 0.45
        probs[w, 0, y], probs[w, 0, 1 - y] = first, 1 - first
        probs[w, 1, y], probs[w, 1, 1 - y] = 0.8, 0.2
        probs[w, 2, y], probs[w, 2, 1 - y] = 0.85, 0.15
    return PrefixProbs(probs, np.full(8, 4), (1, 2, 4)), Windows(np.arange(8), labels)


def test_calibration_picks_the_cheapest_rule_within_the_tolerance():
    pp, w = constructed_validation()
    rule = calibrate(pp, w, tolerance=0.005)
    # Exiting the easy windows after one frame and the hard ones after two (threshold in
    # (0.55, 0.9]) keeps every video right (AUC 1.0 = k_max's) with 4 x 1 + 4 x 2 frames: 1.5 per
    # window. A threshold <= 0.55 exits the hard windows on a wrong first guess; above 0.9 costs
    # more frames.
    assert 0.55 < rule.threshold <= 0.9
    assert operating_point(pp, w, ExitRule(threshold=0.55))["auc"] < 1.0
    point = operating_point(pp, w, rule)
    assert point["mean_frames"] == pytest.approx(1.5) and point["auc"] == pytest.approx(1.0)
    assert rule.calibration["val_mean_frames"] == pytest.approx(1.5) and rule.tolerance == 0.005
    assert [p["k"] for p in fixed_k(pp, w)] == [1, 2, 4]
    assert fixed_k(pp, w)[0]["auc"] < 1.0 == fixed_k(pp, w)[1]["auc"]


def test_when_no_early_exit_keeps_the_score_the_rule_never_exits():
    pp, w = constructed_validation()
    pp.probs[:4, 1] = pp.probs[4:, 0]  # the easy windows now waver at round 2 ...
    pp.probs[:4, 0, :] = pp.probs[:4, 0, ::-1]  # ... and their sure first guess is wrong
    rule = calibrate(pp, w, tolerance=0.0)
    assert operating_point(pp, w, rule)["auc"] >= fixed_k(pp, w)[-1]["auc"]
    assert rule.threshold > pp.probs[:, :2].max() or rule.threshold == NEVER


@pytest.mark.parametrize("method", ["das", "uniform", "dps"])
def test_prefix_probabilities_are_the_models_own_predictions_at_each_k(method):
    torch.manual_seed(0)
    options = {"nested": True} if method == "uniform" else {}
    model = build_model(
        ModelConfig(
            method=method,
            num_frames=8,
            k=4,
            class_names=("a", "b"),
            feature_size=8,
            input_size=16,
            backbone="tiny_cnn",
            sampler=options,
        )
    ).eval()
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(5, 8, 16, 16, generator=g) * 255).to(torch.uint8).numpy()
    valid = np.ones((5, 8), bool)
    valid[4, 5:] = False
    x[4, 5:] = 0
    clips = ClipSet(x, valid, np.array([0, 1, 0, 1, 0]), tuple("abcde"))
    pp = prefix_probs(model, clips)
    assert pp.ladder == (1, 2, 4) and pp.usable.tolist() == [8, 8, 8, 8, 5]
    xt = torch.from_numpy(x)[:, :, None].float() / 255
    with torch.no_grad():
        for r, k in enumerate(pp.ladder):
            want = torch.softmax(model(xt, torch.from_numpy(valid), k=k)[0], dim=1).numpy()
            np.testing.assert_allclose(pp.probs[:, r], want, atol=1e-5)


def test_compare_folds_writes_a_curve_per_run_and_the_curve_summaries(tmp_path):
    from das_stream.cli import main

    npz = write_npz(tmp_path / "m.npz", depth=8, size=16)
    config = write_config(
        tmp_path / "m.yaml", {"kind": "medmnist3d", "path": str(npz), "classes": ["a", "b"], "corruption": "test"}
    )
    out = tmp_path / "cv"
    args = compare_argv(
        config, out, "full,uniform,das", folds=2, sets=("model.backbone=tiny_cnn", "train.k_schedule=random")
    )
    assert main(args) == 0
    for f in (0, 1):
        for run in ("das-keep0.5-seed0", "uniform-keep0.5-seed0"):
            curve = json.loads((out / f"fold{f}" / run / "curve.json").read_text())
            result = json.loads((out / f"fold{f}" / run / "result.json").read_text())
            assert set(curve["test"]) == {"clean", "corrupted"}
            assert curve["ladder"] == list(rounds(result["k"]))
            last = curve["test"]["clean"]["fixed"][-1]
            assert last["k"] == result["k"] and last["auc"] == pytest.approx(result["test"]["auc"], abs=1e-9)
            point = curve["test"]["clean"]["exit"]
            assert 1.0 <= point["mean_frames"] <= result["k"]
            assert 0.0 < curve["exit"]["threshold"]
    text = (out / "tiny-curves.md").read_text()
    assert "| DAS | exit |" in text and "| Uniform | k=1 |" in text
    assert (out / "tiny-curves.png").stat().st_size > 1000 and (out / "tiny-curves-corrupted.md").is_file()
    (out / "fold0" / "das-keep0.5-seed0" / "curve.json").unlink()
    assert main([*args, "--resume"]) == 0  # a resumed grid fills in the missing curve
    assert (out / "fold0" / "das-keep0.5-seed0" / "curve.json").is_file()


def test_train_for_every_k_calibrates_the_exit_and_calibrate_and_info_show_it(tmp_path, capsys):
    from das_stream.cli import main
    from sampler.model import SampledClassifier

    npz = write_npz(tmp_path / "m.npz", depth=8, size=16)
    config = write_config(tmp_path / "m.yaml", {"kind": "medmnist3d", "path": str(npz), "classes": ["a", "b"]})
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--method", "das", "--keep", "0.5", "--out", str(run)]
    assert main([*args, "--set", "train.k_schedule=random"]) == 0
    rule = ExitRule.from_dict(SampledClassifier.load(run / "model.pt").meta["exit"])
    assert rule.tolerance == 0.005 and rule.calibration["k_max"] == 4
    assert "early exit calibrated on validation" in (run / "train.log").read_text()

    capsys.readouterr()
    assert main(["calibrate", str(run / "model.pt"), "--tolerance", "0", "--out", str(tmp_path / "strict.pt")]) == 0
    assert capsys.readouterr().out.startswith("early exit: ")
    strict = ExitRule.from_dict(SampledClassifier.load(tmp_path / "strict.pt").meta["exit"])
    assert strict.tolerance == 0.0 and strict.calibration["val_auc"] >= strict.calibration["val_auc_k_max"]

    assert main(["info", str(tmp_path / "strict.pt")]) == 0
    card = capsys.readouterr().out
    assert "best-first order: frame score a_base, input-adaptive; k_max 4" in card and "early exit: " in card

    assert main(["calibrate", str(run / "model.pt"), "--tolerance", "1.5"]) == 2
    assert "--tolerance must be an AUC difference in [0, 1), got 1.5" in capsys.readouterr().err
    fixed = tmp_path / "fixed"
    assert main([*args[:-1], str(fixed)]) == 0
    assert "exit" not in SampledClassifier.load(fixed / "model.pt").meta  # fixed k: no rule, no calibration


def test_compare_without_folds_writes_curves_too(tmp_path):
    from das_stream.cli import main

    npz = write_npz(tmp_path / "m.npz", depth=8, size=16)
    config = write_config(tmp_path / "m.yaml", {"kind": "medmnist3d", "path": str(npz), "classes": ["a", "b"]})
    out = tmp_path / "grid"
    args = compare_argv(config, out, "uniform,das", sets=("model.backbone=tiny_cnn", "train.k_schedule=random"))
    assert main(args) == 0
    for run in ("das-keep0.5-seed0", "uniform-keep0.5-seed0"):
        curve = json.loads((out / run / "curve.json").read_text())
        result = json.loads((out / run / "result.json").read_text())
        last = curve["test"]["clean"]["fixed"][-1]
        assert last["k"] == result["k"] and last["auc"] == pytest.approx(result["test"]["auc"], abs=1e-9)
    assert "| DAS | k=1 |" in (out / "tiny-curves.md").read_text()
