"""The training workflow end to end through the CLI: what was trained is what runs (issue 15).

One tiny video dataset (two classes, 30 fps clips resampled to 8 fps, T = 16 = 2 s) is trained
once per module; the tests then run, evaluate, describe and export that model.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from training_help import write_config, write_npz, write_video

from das_stream.cli import main
from sampler.backbones.mobilenet import imagenet_cache_path
from sampler.model import SampledClassifier

FPS, T, SOURCE_FPS = 8, 16, 30


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    rows = []
    for cls, base in (("normal", 40), ("covid", 200)):
        for i in range(4):
            # One 2 s clip per class (16 frames at 8 fps) and three 1 s clips (padded to T).
            n = 2 * SOURCE_FPS if i == 0 else SOURCE_FPS
            write_video(root / f"{cls}{i}.mp4", [base + (j % 5) for j in range(n)], fps=SOURCE_FPS)
            rows.append((f"{cls}{i}.mp4", cls))
    rows.append(("normal0.mp4", "nromal"))  # a typo: left out, with a suggestion
    with (root / "index.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    config = write_config(
        root / "videos.yaml",
        {
            "kind": "videos",
            "path": str(root / "index.csv"),
            "label_column": "label",
            "classes": ["normal", "covid"],
            "drop_unknown": True,  # the typo row is left out with a warning, not an error
            "fps": FPS,
            "size": 32,
            "num_frames": T,
            "cache_dir": str(root / "cache"),
        },
        model={"backbone": "tiny_cnn", "feature_size": 16, "input_size": 32},
    )
    run = root / "run"
    assert main(["train", "--config", str(config), "--out", str(run), "--device", "cpu"]) == 0
    stream = write_video(root / "stream.mp4", [(7 * j) % 250 for j in range(4 * SOURCE_FPS)], fps=SOURCE_FPS)
    slow = write_video(root / "slow.mp4", [100] * 12, fps=4)
    return {"root": root, "config": config, "run": run, "model": run / "model.pt", "stream": stream, "slow": slow}


def test_train_reports_left_out_rows_and_padding(videos):
    log = (videos["run"] / "train.log").read_text()
    assert "warning: 1 of 9 rows" in log and "'nromal' 1 row (did you mean 'normal'?)" in log
    # normal1-3 are the same 1 s clip: copies in two splits are not held out, and the log says so
    assert re.search(r"warning: \d video\(s\) have the same content as a video in another split: normal\d", log)
    assert "padding: 6 of 8 clips are shorter than T=16" in log and "normal 3/4, covid 3/4" in log
    assert "warning: T=16 exceeds the length of most clips (6 of 8" in log
    assert "done in " in log and " s: best epoch" in log  # under a minute: seconds


def old_format_copy(tmp_path: Path) -> Path:
    """A model file as written before ``meta`` existed: the bundled demo.pt's payload without it
    (so the check does not depend on which demo.pt is bundled)."""
    payload = torch.load(Path(__file__).resolve().parents[2] / "streamer" / "assets" / "demo.pt", weights_only=True)
    payload.pop("meta", None)
    torch.save(payload, tmp_path / "old-format.pt")
    return tmp_path / "old-format.pt"


def test_model_file_records_preprocessing_and_weights(videos, tmp_path):
    model = SampledClassifier.load(videos["model"])
    pre = model.preprocessing
    assert (pre["fps"], pre["size"], pre["num_frames"], pre["kind"], pre["gray"]) == (8.0, 32, T, "videos", True)
    assert model.meta["training"]["clips"]["train"] == {"normal": 2, "covid": 2}
    assert model.meta["training"]["backbone_weights_used"] == model.config.backbone_weights == "none"
    # Old model files (no meta) still load, with nothing recorded.
    demo = SampledClassifier.load(old_format_copy(tmp_path))
    assert demo.meta == {} and demo.preprocessing == {}


def test_run_resamples_a_30fps_video_to_the_models_8fps(videos, tmp_path):
    out = tmp_path / "out.jsonl"
    argv = [
        "run",
        "--source",
        f"video:{videos['stream']}",
        "--model",
        str(videos["model"]),
        "--no-pacing",
        "--jsonl",
        str(out),
        "--quiet",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    messages = [json.loads(line) for line in out.read_text().splitlines()]
    preds = [m for m in messages if m["type"] == "prediction"]
    final = [m for m in messages if m["type"] == "stats" and m["final"]][-1]
    # Frame i of the 30 fps stream is kept when it is the nearest to a time j / 8 s (ties: the later).
    kept = sorted({int(np.floor(j * SOURCE_FPS / FPS + 0.5)) for j in range(32)})
    assert [(p["first_seq"], p["last_seq"]) for p in preds] == [(kept[0], kept[15]), (kept[16], kept[31])]
    for p in preds:  # each window holds 16 frames covering 15/8 s of content, as a training clip
        assert (p["last_seq"] - p["first_seq"]) / SOURCE_FPS == pytest.approx((T - 1) / FPS, abs=0.5 / SOURCE_FPS)
        assert set(p["selected"]) <= set(kept) and p["padded"] == 0
    assert final["frames_in"] == 4 * SOURCE_FPS and final["frames_resampled_out"] == 4 * SOURCE_FPS - 32
    assert final["frames_in"] == (
        final["frames_forwarded"]
        + final["frames_skipped"]
        + final["frames_dropped"]
        + final["frames_resampled_out"]
        + final["frames_pending"]
    )
    assert final["frames_pending"] == 0 and final["frames_forwarded"] == len({s for p in preds for s in p["selected"]})


def test_run_warns_when_the_source_is_slower_than_the_model(videos, tmp_path, caplog):
    out = tmp_path / "slow.jsonl"
    with caplog.at_level(logging.WARNING):
        assert (
            main(
                [
                    "run",
                    "--source",
                    f"video:{videos['slow']}",
                    "--model",
                    str(videos["model"]),
                    "--no-pacing",
                    "--jsonl",
                    str(out),
                    "--quiet",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    warnings = [r.getMessage() for r in caplog.records if "below the model's" in r.getMessage()]
    assert len(warnings) == 1 and "runs at 4 fps, below the model's 8 fps" in warnings[0]
    final = [json.loads(x) for x in out.read_text().splitlines()][-1]
    assert final["frames_in"] == 12 and final["frames_resampled_out"] == 0


def test_evaluate_writes_confusion_and_refuses_another_input_size(videos, tmp_path, capsys):
    model = str(videos["model"])
    assert main(["evaluate", "--model", model, "--out", str(tmp_path), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'eval-test.json'}" in printed and str(tmp_path / "confusion-test.png") in printed
    confusion = json.loads((tmp_path / "confusion-test.json").read_text())
    preds = list(csv.DictReader((tmp_path / "predictions-test.csv").open()))
    matrix = np.array(confusion["matrix"])
    assert matrix.sum() == len(preds) == 2 and confusion["classes"] == ["normal", "covid"]
    for i, name in enumerate(confusion["classes"]):
        tp = sum(r["label"] == name and r["predicted"] == name for r in preds)
        assert matrix[i, i] == tp and confusion["per_class"][name]["sensitivity"] == tp / sum(
            r["label"] == name for r in preds
        )
    assert (tmp_path / "confusion-test.png").stat().st_size > 1000
    assert "warning: 1 of the 2 samples are in the model's training split" in (tmp_path / "evaluate.log").read_text()
    # Video-level scores: the split's whole videos (the same ones), every window of each, averaged.
    assert "test whole videos: auc" in printed and str(tmp_path / "videos-test.json") in printed
    videos_json = json.loads((tmp_path / "videos-test.json").read_text())
    assert sorted(videos_json["videos_by_name"]) == sorted(r["clip"] for r in preds)
    assert videos_json["videos"] == len(preds) == len(videos_json["videos_by_name"])
    for video in videos_json["videos_by_name"].values():
        assert video["windows"] >= 1 and abs(sum(video["probs"]) - 1.0) < 1e-4

    again = ["evaluate", "--model", model, "--out", str(tmp_path / "again"), "--set", "model.input_size=48"]
    assert main(again) == 2
    err = capsys.readouterr().err
    assert "model.input_size=48 (model 32)" in err and "pass the config it was trained with" in err
    assert len(err.strip().splitlines()) == 1


def test_info_prints_the_model_card(videos, capsys, tmp_path):
    assert main(["info", str(videos["model"])]) == 0
    card = capsys.readouterr().out
    for text in (
        "method: das, keeps k=8 of T=16",
        "classes: normal, covid",
        "8 fps, 32 px",
        "backbone: tiny_cnn",
        "initial weights used: none",
        "fingerprint ",
        "train: 4 clips (normal 2, covid 2)",
        "padded clips: normal 3/4, covid 3/4",
        "metrics: best_epoch 1",
        "versions: das_stream",
        "created: 20",
    ):
        assert text in card, text
    assert main(["info", str(old_format_copy(tmp_path))]) == 0
    assert "preprocessing: not recorded" in capsys.readouterr().out


def test_export_writes_a_checked_package_that_run_info_and_the_engine_accept(videos, tmp_path, capsys):
    from sampler.package import PackageModel, classify_windows
    from sampler.torch_model import TorchWindowModel
    from sources.video import read_video

    path = tmp_path / "model.dasp"
    clip = videos["root"] / "covid0.mp4"
    assert main(["export", str(videos["model"]), "--out", str(path), "--check-video", str(clip)]) == 0
    out = capsys.readouterr().out
    assert "video file(s)" in out and "max |p_package - p_torch|" in out
    package = PackageModel(path, device="cpu")
    assert (
        package.preprocessing["fps"] == 8.0
        and package.card["check"]["picks_identical"] == package.card["check"]["windows"]
    )
    # A real window: the first 2 s of a clip, decoded as training does, through both window models.
    frames, _ = read_video(clip, size=32, fps=FPS, max_frames=T)
    valid = np.ones((1, T), bool)
    torch_picks, torch_probs = classify_windows(
        TorchWindowModel(SampledClassifier.load(videos["model"]), "cpu"), frames[None], valid
    )
    picks, probs = classify_windows(package, frames[None], valid)
    assert (picks == torch_picks).all() and np.abs(probs - torch_probs).max() < 1e-4
    assert main(["info", str(path)]) == 0
    assert "model package" in capsys.readouterr().out
    # evaluate runs the package as a deployment does: the torch model's clip probabilities
    config = str(videos["config"])
    assert main(["evaluate", "--model", str(videos["model"]), "--config", config, "--out", str(tmp_path / "t")]) == 0
    assert main(["evaluate", "--model", str(path), "--config", config, "--out", str(tmp_path / "p")]) == 0
    assert "the package on ONNX Runtime" in capsys.readouterr().out
    by_torch = list(csv.DictReader((tmp_path / "t" / "predictions-test.csv").open()))
    by_package = list(csv.DictReader((tmp_path / "p" / "predictions-test-package.csv").open()))
    assert [r["clip"] for r in by_torch] == [r["clip"] for r in by_package] and len(by_package) == 2
    for a, b in zip(by_torch, by_package):
        assert a["picked"] == b["picked"]
        assert all(abs(float(a[k]) - float(b[k])) <= 2e-4 for k in a if k.startswith("p_"))  # 4 decimals in the CSV
    # run and info say which they loaded; a torch engine on a package is a one-line error
    assert main(["run", "--model", str(path), "--engine", "torch", "--duration", "1", "--quiet"]) == 2
    assert "a model package runs on ONNX Runtime" in capsys.readouterr().err


def test_too_few_videos_lists_the_csv_labels(videos, tmp_path, capsys):
    config = videos["config"]
    rc = main(["train", "--config", str(config), "--out", str(tmp_path / "r"), "--set", "data.classes=[normal,covd]"])
    err = capsys.readouterr().err
    assert rc == 2 and "class covd (0) has fewer than 3 videos" in err
    assert "column holds: covid (4), normal (4), nromal (1)" in err and "for 'covd' (did you mean 'covid'?)" in err


@pytest.fixture()
def npz_config(tmp_path) -> Path:
    npz = write_npz(tmp_path / "tiny.npz", depth=8, size=16)
    return write_config(
        tmp_path / "tiny.yaml",
        {"kind": "medmnist3d", "path": str(npz), "classes": ["normal", "cube"]},
        train={"patience": 5},
    )


def test_train_refuses_a_non_empty_out_and_records_the_weights_used(npz_config, tmp_path, capsys):
    run = tmp_path / "run"
    argv = [
        "train",
        "--config",
        str(npz_config),
        "--out",
        str(run),
        "--set",
        "model.backbone_weights=auto",
        "--set",
        "train.progress=true",
    ]
    assert main(argv) == 0
    assert "it/s" not in capsys.readouterr().err  # progress bars are off when stderr is not a terminal
    model = SampledClassifier.load(run / "model.pt")
    used = "imagenet" if imagenet_cache_path().is_file() else "none"  # auto falls back to random init
    assert model.config.backbone_weights == used == model.meta["training"]["backbone_weights_used"]
    assert model.meta["training"]["backbone_weights_requested"] == "auto"
    (run / "eval-test.json").write_text("{}")  # what an earlier evaluate left
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"run folder {run} is not empty" in err and "--overwrite" in err
    assert main([*argv, "--overwrite"]) == 0
    assert not (run / "eval-test.json").exists() and (run / "model.pt").is_file()


def test_resume_continues_from_the_last_epoch_checkpoint(npz_config, tmp_path, monkeypatch, capsys):
    from training import commands

    base = ["train", "--config", str(npz_config), "--epochs", "3", "--set", "model.backbone=tiny_cnn"]
    assert main([*base, "--out", str(tmp_path / "whole")]) == 0

    write = commands.RunLog.__call__

    def interrupted(self, line):  # Ctrl-C while epoch 3 finishes
        if line.startswith("epoch 3/3"):
            raise KeyboardInterrupt
        write(self, line)

    monkeypatch.setattr(commands.RunLog, "__call__", interrupted)
    assert main([*base, "--out", str(tmp_path / "cut")]) == 130
    assert (tmp_path / "cut" / "checkpoint.pt").is_file() and not (tmp_path / "cut" / "model.pt").exists()
    monkeypatch.setattr(commands.RunLog, "__call__", write)
    assert main([*base, "--out", str(tmp_path / "cut")]) == 2  # not empty: needs --resume or --overwrite
    assert main([*base, "--out", str(tmp_path / "cut"), "--resume", "--set", "train.lr=0.1"]) == 2  # another config
    assert "config differs from the one" in capsys.readouterr().err.splitlines()[-1]
    assert main([*base, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    log = (tmp_path / "cut" / "train.log").read_text()
    assert "resumed from" in log and "after epoch 2" in log and log.count("epoch 3/3") == 1
    whole, cut = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("whole", "cut"))
    for key in ("val", "test", "val_loss", "best_epoch", "epochs_run"):
        assert whole[key] == cut[key], key
    states = [SampledClassifier.load(tmp_path / d / "model.pt").state_dict() for d in ("whole", "cut")]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()


def test_init_from_starts_from_a_trained_model_and_refuses_another_shape(npz_config, tmp_path, capsys):
    base = ["train", "--config", str(npz_config), "--epochs", "1", "--set", "model.backbone=tiny_cnn"]
    assert main([*base, "--out", str(tmp_path / "first")]) == 0
    first = tmp_path / "first" / "model.pt"
    still = ["--set", "train.lr=1e-12"]  # Adam moves each weight by about lr: the start stays visible
    assert main([*base, *still, "--out", str(tmp_path / "tuned"), "--set", f"train.init_from={first}"]) == 0
    assert main([*base, *still, "--out", str(tmp_path / "fresh")]) == 0
    a, tuned, fresh = (
        SampledClassifier.load(p) for p in (first, tmp_path / "tuned" / "model.pt", tmp_path / "fresh" / "model.pt")
    )
    params = [name for name, _ in a.named_parameters()]
    assert all(torch.allclose(a.state_dict()[n], tuned.state_dict()[n], atol=1e-8) for n in params)
    assert not all(torch.allclose(a.state_dict()[n], fresh.state_dict()[n], atol=1e-4) for n in params)
    assert tuned.config.backbone_weights == str(first)
    capsys.readouterr()
    rc = main(
        [*base, "--out", str(tmp_path / "other"), "--set", f"train.init_from={first}", "--set", "model.keep=0.25"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "train.init_from" in err[-1] and "has k=" in err[-1] and "start from another model" in err[-1]
    assert main([*base, "--out", str(tmp_path / "gone"), "--set", f"train.init_from={tmp_path / 'nope.pt'}"]) == 2
    assert "nope.pt does not exist" in capsys.readouterr().err
