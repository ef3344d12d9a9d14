"""The train / evaluate / compare commands, end to end on a tiny generated npz."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_help import compare_argv, write_config, write_npz

from das_stream.cli import main
from sampler.model import SampledClassifier


@pytest.fixture()
def config(tmp_path) -> Path:
    npz = write_npz(tmp_path / "tiny.npz", depth=8, size=16)
    return write_config(tmp_path / "tiny.yaml", {"kind": "medmnist3d", "path": str(npz), "classes": ["normal", "cube"]})


def test_train_one_epoch_then_evaluate(config, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(["train", "--config", str(config), "--method", "das", "--keep", "0.5", "--seed", "0", "--out", str(run)])
        == 0
    )
    for name in ("model.pt", "config.yaml", "result.json", "history.csv", "train.log", "selection-test.png"):
        assert (run / name).is_file(), name
    result = json.loads((run / "result.json").read_text())
    assert (result["method"], result["k"], result["num_frames"], result["epochs_run"]) == ("das", 4, 8, 1)
    assert 0.0 <= result["test"]["auc"] <= 1.0 and 0.0 <= result["test"]["acc"] <= 100.0
    assert result["unique_frames"] == 4.0  # DAS picks k distinct slices
    model = SampledClassifier.load(run / "model.pt")
    assert model.config.class_names == ("normal", "cube") and model.config.method == "das"
    assert "epoch 1/1 loss" in (run / "train.log").read_text()

    capsys.readouterr()
    assert main(["evaluate", "--model", str(run / "model.pt"), "--split", "test", "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "eval-test.json").read_text())
    # The saved model, evaluated again, reproduces the test score written at the end of training.
    assert report["auc"] == pytest.approx(result["test"]["auc"]) and report["acc"] == pytest.approx(
        result["test"]["acc"]
    )
    assert printed.startswith(f"scored the test split recorded in {run / 'model.pt'} (8 samples)")
    assert "\ntest: auc " in printed
    with (tmp_path / "eval" / "predictions-test.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(len(r["picked"].split()) == 4 for r in rows)
    assert (tmp_path / "eval" / "selection-test.png").stat().st_size > 1000


def test_same_seed_same_result(config, tmp_path):
    runs = []
    for name in ("a", "b"):
        assert main(["train", "--config", str(config), "--seed", "3", "--out", str(tmp_path / name)]) == 0
        runs.append(tmp_path / name)
    results = [json.loads((r / "result.json").read_text()) for r in runs]
    for key in ("val", "test", "val_loss"):
        assert results[0][key] == results[1][key]
    states = [SampledClassifier.load(r / "model.pt").state_dict() for r in runs]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_compare_writes_the_table_and_resumes(config, tmp_path, capsys):
    out = tmp_path / "grid"
    args = compare_argv(config, out, "uniform,das", keeps="0.25,0.5", sets=("model.backbone=tiny_cnn",))
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| Dataset | keep | Uniform | DAS |" in table
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == ["das-keep0.25-seed0", "das-keep0.5-seed0", "uniform-keep0.25-seed0", "uniform-keep0.5-seed0"]
    with (out / "tiny.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["keep"]) for r in rows] == [
        ("uniform", "0.25"),
        ("uniform", "0.5"),
        ("das", "0.25"),
        ("das", "0.5"),
    ]
    assert list(rows[0]) == ["dataset", "method", "keep", "auc_mean", "auc_std", "acc_mean", "acc_std"]
    assert (out / "tiny.md").is_file() and (out / "tiny-auc.png").stat().st_size > 1000

    before = {r: (out / r / "result.json").stat().st_mtime_ns for r in runs}
    (out / "das-keep0.5-seed0" / "result.json").unlink()  # as if the session ended during this run
    assert main([*args, "--resume"]) == 0
    log = (out / "compare.log").read_text()
    assert log.count("result exists, skipped (--resume)") == 3
    after = {r: (out / r / "result.json").stat().st_mtime_ns for r in runs}
    assert [r for r in runs if after[r] != before[r]] == ["das-keep0.5-seed0"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("das-stream: error: ")
    return err[0]


def test_user_errors_are_one_line(config, tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert f"config file {tmp_path / 'nope.yaml'} not found" in _one_error_line(capsys)

    assert main(["train", "--config", str(config), "--set", "train.lrr=0.1"]) == 2
    assert "unknown key train.lrr (set on the command line); known keys in train:" in _one_error_line(capsys)

    bad = write_config(
        tmp_path / "bad.yaml", {"kind": "medmnist3d", "path": str(tmp_path / "tiny.npz")}, train={"epochs": "many"}
    )
    assert main(["train", "--config", str(bad)]) == 2
    assert f"train.epochs in {bad} must be an integer" in _one_error_line(capsys)

    partial = write_npz(tmp_path / "partial.npz", drop=("test_labels",))
    cfg = write_config(tmp_path / "partial.yaml", {"kind": "medmnist3d", "path": str(partial)})
    assert main(["train", "--config", str(cfg)]) == 2
    assert "lacks keys test_labels" in _one_error_line(capsys)

    assert main(["evaluate", "--model", str(tmp_path / "missing.pt")]) == 2
    assert "model file" in _one_error_line(capsys)


def test_missing_dataset_via_the_installed_command(tmp_path):
    cfg = write_config(tmp_path / "gone.yaml", {"kind": "medmnist3d", "path": str(tmp_path / "gone.npz")})
    exe = Path(sys.executable).with_name("das-stream")
    proc = subprocess.run(
        [str(exe), "train", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"das-stream: error: dataset file {tmp_path / 'gone.npz'} not found; set data.path to a MedMNIST 3D npz "
        "(e.g. adrenalmnist3d.npz)"
    ]
