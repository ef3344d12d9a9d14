"""The training loop: best-validation weights kept, eval-mode BatchNorm statistics usable."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from training_help import write_npz

from sampler.model import ModelConfig, build_model
from training.config import TrainSettings
from training.datasets import load_medmnist3d
from training.loop import evaluate, fit, seed_everything

CPU = torch.device("cpu")
SETTINGS = TrainSettings(epochs=3, patience=3, batch_size=8, progress=False)


@pytest.fixture()
def data(tmp_path):
    return load_medmnist3d(write_npz(tmp_path / "tiny.npz", depth=8, size=16))


def model(method: str, backbone: str):
    seed_everything(0)
    k = 8 if method == "full" else 4
    config = ModelConfig(
        method=method, num_frames=8, k=k, class_names=("a", "b"), feature_size=16, input_size=32, backbone=backbone
    )
    return build_model(config)


def test_the_best_validation_epoch_is_the_one_kept(data):
    lines: list[str] = []
    net = model("das", "tiny_cnn")
    fitted = fit(net, data, SETTINGS, device=CPU, log=lines.append)
    losses = [e.val_loss for e in fitted.history]
    assert len(fitted.history) == 3 and fitted.best_epoch == int(np.argmin(losses)) + 1
    assert lines[fitted.best_epoch - 1].endswith(" *") and lines[0].startswith("epoch 1/3 loss ")
    again = evaluate(net, data.val, device=CPU, weight=torch.tensor([1.0, 1.0]))
    assert again.loss == pytest.approx(fitted.best.val_loss, rel=1e-5)  # class counts are balanced here


def test_eval_mode_statistics_follow_the_epoch_for_mobilenet_from_random_init(data):
    # MobileNetV3's own BatchNorm momentum (0.01) keeps the initial running variance of 1 for
    # hundreds of steps; its depthwise layers' true variances are tiny, so eval-mode outputs are
    # the same for every clip. Statistics re-estimated over each epoch do not have that problem.
    spread = {}
    for mode in ("ema", "epoch"):
        net = model("full", "mobilenet_v3_small")
        settings = dataclasses.replace(SETTINGS, epochs=1, bn_stats=mode, bn_momentum=0.0)
        fit(net, data, settings, device=CPU, log=lambda line: None)
        spread[mode] = float(evaluate(net, data.val, device=CPU).probs[:, 1].std())
    assert spread["ema"] < 1e-4 < 1e-3 < spread["epoch"]


def test_explore_epochs_anneal_the_gumbel_noise_to_zero_and_leave_the_model_as_built(data):
    from training.loop import exploration

    assert [exploration(e, 0) for e in (1, 5, 50)] == [1.0, 1.0, 1.0]
    assert [exploration(e, 2) for e in (1, 2, 3, 9)] == [1.0, 0.5, 0.0, 0.0]
    assert [round(exploration(e, 4), 2) for e in range(1, 6)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    lines: list[str] = []
    net = model("das", "tiny_cnn")
    seen: list[float] = []
    original = net.sampler.select

    def spy(x, valid=None, k=None):  # what each training batch ran with
        if net.training:
            seen.append(net.sampler.noise_scale)
        return original(x, valid, k)

    net.sampler.select = spy
    fit(net, data, dataclasses.replace(SETTINGS, epochs=3, patience=3, explore_epochs=2), device=CPU, log=lines.append)
    assert [line.rsplit(" noise ", 1)[1] for line in lines if " noise " in line] == ["1.00", "0.50", "0.00"]
    assert set(seen) == {1.0, 0.5, 0.0} and seen == sorted(seen, reverse=True)
    assert net.sampler.noise_scale == 1.0
    plain: list[str] = []
    fit(model("das", "tiny_cnn"), data, dataclasses.replace(SETTINGS, epochs=1), device=CPU, log=plain.append)
    assert " noise " not in plain[0]  # the default run's log is unchanged


def test_explore_epochs_scale_the_samplers_own_noise_level_and_restore_it(data):
    net = model("das", "tiny_cnn")
    net.sampler.noise_scale = 0.5  # set by the user before training
    lines: list[str] = []
    fit(net, data, dataclasses.replace(SETTINGS, epochs=3, patience=3, explore_epochs=2), device=CPU, log=lines.append)
    assert [line.rsplit(" noise ", 1)[1] for line in lines] == ["0.50", "0.25", "0.00"]
    assert net.sampler.noise_scale == 0.5


def test_k_ladder_and_the_scheduled_k_are_reproducible_and_in_range():
    from core.exit import rounds
    from training.loop import scheduled_k

    assert rounds(8) == (1, 2, 4, 8) and rounds(6) == (1, 2, 4, 6) and rounds(1) == (1,)
    assert scheduled_k("fixed", 8, 0, 1, 0) is None
    draws = [scheduled_k("random", 8, 0, e, b) for e in range(1, 4) for b in range(20)]
    assert set(draws) <= set(range(1, 9)) and len(set(draws)) >= 6
    assert draws == [scheduled_k("random", 8, 0, e, b) for e in range(1, 4) for b in range(20)]
    assert draws != [scheduled_k("random", 8, 1, e, b) for e in range(1, 4) for b in range(20)]


def test_k_schedule_random_trains_every_k_and_validates_over_the_ladder(data):
    net = model("das", "tiny_cnn")
    train_ks: list[int | None] = []
    eval_ks: list[int | None] = []
    original = net.sampler.select

    def spy(x, valid=None, k=None):
        (train_ks if net.training else eval_ks).append(k)
        return original(x, valid, k)

    net.sampler.select = spy
    settings = dataclasses.replace(SETTINGS, epochs=2, patience=2, batch_size=2, k_schedule="random")
    fit(net, data, settings, device=CPU, log=lambda _: None)
    assert set(train_ks) <= {1, 2, 3, 4} and len(set(train_ks)) >= 2
    assert {None, 1, 2} <= set(eval_ks), "validation scores k = 1, 2 and the model's own k"


def test_k_schedule_random_makes_uniform_pick_coarse_to_fine():
    from training.config import config_from_dict
    from training.runs import sampler_options

    raw = {"data": {"kind": "synthetic"}, "model": {"method": "uniform"}, "train": {"k_schedule": "random"}}
    cfg = config_from_dict(raw)
    assert sampler_options(cfg) == {"nested": True}
    assert sampler_options(cfg.replace(train={"k_schedule": "fixed"})) == {}
