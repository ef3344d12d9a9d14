"""What was tested is what was held out (issue 24): the split travels in the model file, patient
groups are honoured by train, evaluate and compare, and data problems are errors or stated
warnings, never silent. Real videos written by the tests, the real CLI."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from training_help import write_config, write_video, write_video_index

from core.errors import ConfigError, DataError
from das_stream.cli import main
from sampler.model import SampledClassifier
from training.config import auto_threads, load_config
from training.datasets import load_dataset, stratified_split
from training.runs import log_warnings_as_lines, set_threads
from training.split import BY_VIDEO_NOTE, check_apart, grouped_split

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def video_config(root: Path, name: str = "lung.yaml", **data) -> Path:
    index = root / "index.csv"
    return write_config(
        root / name,
        {
            "kind": "videos",
            "path": str(index),
            "label_column": "label",
            "fps": 10,
            "size": 16,
            "num_frames": 8,
            "cache_dir": str(root / "cache"),
            **data,
        },
        model={"backbone": "tiny_cnn", "feature_size": 16, "input_size": 16},
    )


@pytest.fixture(scope="module")
def lung(tmp_path_factory) -> dict[str, Path]:
    """12 videos of 6 patients (one dark, one bright each) and a model trained on them, split by video."""
    root = tmp_path_factory.mktemp("lung")
    write_video_index(root)
    config = video_config(root)
    run = root / "run"
    assert main(["train", "--config", str(config), "--out", str(run), "--device", "cpu"]) == 0
    return {"root": root, "config": config, "run": run, "model": run / "model.pt"}


def recorded(model: Path, split: str) -> list[str]:
    return sorted(n for n, _, _ in SampledClassifier.load(model).meta["split"][split])


def predicted_names(folder: Path, label: str = "test") -> list[str]:
    with (folder / f"predictions-{label}.csv").open() as f:
        return sorted(r["clip"] for r in csv.DictReader(f))


# --- 1. the split is part of the model ----------------------------------------------------------


def test_evaluate_scores_the_recorded_test_split_whatever_the_split_seed(lung, tmp_path, capsys):
    test = recorded(lung["model"], "test")
    meta = SampledClassifier.load(lung["model"]).meta["split"]
    assert meta["by"] == "video" and len(meta["train"]) == 8 and len(test) == 2
    assert all(len(d) == 16 for _, d, _ in meta["train"])  # content hashes
    # Another seed makes another split of these videos: re-splitting would score other ones.
    labels = np.arange(12) % 2
    assert [p.tolist() for p in stratified_split(labels, fractions=(0.6, 0.2, 0.2), seed=1)] != [
        p.tolist() for p in stratified_split(labels, fractions=(0.6, 0.2, 0.2), seed=0)
    ]
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(lung["model"]), "--out", str(out), "--set", "data.split_seed=1"]
    assert main(argv) == 0
    assert predicted_names(out) == test
    report = json.loads((out / "eval-test.json").read_text())
    assert report["scored"].startswith("the test split recorded in") and report["seen"] == {
        "train": 0,
        "val": 0,
        "group": 0,
    }
    assert "scored the test split recorded in" in capsys.readouterr().out


def test_evaluate_refuses_a_recorded_video_whose_content_changed(lung, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(lung["root"] / "videos", copy / "videos")
    shutil.copy(lung["root"] / "index.csv", copy / "index.csv")
    changed = recorded(lung["model"], "test")[0]
    write_video(copy / changed, [99] * 12, fps=10, size=(16, 16))
    argv = ["evaluate", "--model", str(lung["model"]), "--out", str(tmp_path / "e")]
    assert main([*argv, "--set", f"data.path={copy / 'index.csv'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 of the model's test samples changed content since training" in err[0]
    assert changed in err[0] and "--data" in err[0]


def test_evaluate_other_data_counts_what_the_model_trained_on_and_refuses_it(lung, tmp_path, capsys):
    root = lung["root"]
    with (root / "index.csv").open() as f:
        label = {r["path"]: r["label"] for r in csv.DictReader(f)}
    train, val, test = (recorded(lung["model"], s) for s in ("train", "val", "test"))
    shutil.copy(root / train[0], root / "videos" / "renamed_copy.mp4")  # same content, other name
    label["videos/renamed_copy.mp4"] = label[train[0]]

    def index(path: Path, names: list[str]) -> Path:
        path.write_text("path,label\n" + "".join(f"{n},{label[n]}\n" for n in names))
        return path

    other = index(root / "other.csv", [train[0], train[1], test[0], "videos/renamed_copy.mp4"])
    base = ["evaluate", "--model", str(lung["model"]), "--data", str(other)]
    assert main([*base, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 of the 4 samples are in the model's training split" in err[0]
    assert "--allow-overlap" in err[0] and not (tmp_path / "a").exists()

    assert main([*base, "--out", str(tmp_path / "b"), "--allow-overlap"]) == 0
    report = json.loads((tmp_path / "b" / "eval-data-other.json").read_text())
    assert report["seen"] == {"train": 3, "val": 0, "group": 0} and report["clips"] == 4
    assert "warning: 3 of the 4 samples" in (tmp_path / "b" / "evaluate.log").read_text()

    # With patients known, a held-out video of a patient the model trained on counts too.
    def patient(name: str) -> str:
        return re.search(r"pat\d+", name).group(0)

    seen = {patient(n) for n in train + val}
    shared = [n for n in test if patient(n) in seen]
    assert shared  # by video, a test video's patient has another video in training
    only_test = index(root / "only_test.csv", shared[:1])
    grouped = ["--set", r"data.group_regex=(pat\d+)"]
    assert main(["evaluate", "--model", str(lung["model"]), "--data", str(only_test), *grouped]) == 2
    assert "1 more belong to a patient group it trained or validated on" in capsys.readouterr().err
    assert main(["evaluate", "--allow-overlap", "--model", str(lung["model"])]) == 2
    assert "--allow-overlap goes with --data" in capsys.readouterr().err


# --- 2. patient groups everywhere ---------------------------------------------------------------


def test_a_grouped_split_never_puts_a_patient_on_both_sides():
    labels = np.arange(40) % 2
    groups = np.array([f"p{i // 4}" for i in range(40)], dtype=object)  # 10 patients, 4 videos each
    for seed in range(12):
        parts = grouped_split(labels, groups, fractions=(0.6, 0.2, 0.2), seed=seed)
        check_apart(groups, parts)
        assert sorted(np.concatenate(parts).tolist()) == list(range(40))
        assert all(set(labels[p].tolist()) == {0, 1} for p in parts)
    with pytest.raises(DataError, match="group 'p0' is in both train and test"):
        check_apart(groups, [np.array([0]), np.array([], dtype=int), np.array([1])])
    with pytest.raises(DataError, match=r"needs at least 5 groups of videos, but the groups give 3"):
        grouped_split(labels[:12], groups[:12], fractions=(0.6, 0.2, 0.2), seed=0)


def test_train_with_a_group_regex_keeps_each_patient_in_one_split(lung, tmp_path, capsys):
    by_video = SampledClassifier.load(lung["model"]).meta["split"]
    patient = re.compile(r"pat\d+")
    sides = {}
    for split in ("train", "val", "test"):
        for name, _, _ in by_video[split]:
            sides.setdefault(patient.search(name).group(0), set()).add(split)
    assert any(len(s) > 1 for s in sides.values())  # by video, a patient does land on two sides

    run = tmp_path / "grouped"
    argv = ["train", "--config", str(lung["config"]), "--out", str(run), "--set", r"data.group_regex=(pat\d+)"]
    assert main(argv) == 0
    split = SampledClassifier.load(run / "model.pt").meta["split"]
    assert split["by"] == r"group_regex '(pat\d+)'"
    groups = {s: {g for _, _, g in split[s]} for s in ("train", "val", "test")}
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"] or groups["val"] & groups["test"])
    assert sum(len(split[s]) for s in groups) == 12
    log = (run / "train.log").read_text()
    assert BY_VIDEO_NOTE not in log and log.count(BY_VIDEO_NOTE) == 0
    assert (lung["run"] / "train.log").read_text().count(BY_VIDEO_NOTE) == 1  # said once when there are no groups
    capsys.readouterr()
    assert main(["info", str(run / "model.pt")]) == 0
    assert r"split (by group_regex '(pat\d+)'; `evaluate` scores the recorded test split)" in capsys.readouterr().out


def test_compare_without_folds_groups_records_its_split_and_summarises_every_run(lung, tmp_path):
    out = tmp_path / "grid"
    base = ["compare", "--config", str(lung["config"]), "--out", str(out), "--seeds", "0", "--keeps", "0.5"]
    grouped = ["--set", r"data.group_regex=(pat\d+)"]
    assert main([*base, *grouped, "--methods", "uniform,das"]) == 0
    log = (out / "compare.log").read_text()
    assert "compare tiny: 2 runs (2 method(s) x 1 keep(s) x 1 seed(s)" in log
    assert re.search(r"\[2/2\] das-keep0.5-seed0 \(elapsed [\d.]+ s; about [\d.]+ s left, [\d.]+ s in all", log)
    assert "2 run(s) trained, 0 skipped" in log
    record = json.loads((out / "split.json").read_text())
    for run in ("uniform-keep0.5-seed0", "das-keep0.5-seed0"):
        split = SampledClassifier.load(out / run / "model.pt").meta["split"]
        assert split["test"] == record["test"] and split["by"] == r"group_regex '(pat\d+)'"
        assert not {g for _, _, g in split["train"]} & {g for _, _, g in split["test"]}
    # A later compare into the folder keeps its split (another split seed is not used) and the
    # summary covers every finished run, not only this call's methods.
    assert main([*base, *grouped, "--methods", "random", "--set", "data.split_seed=5"]) == 0
    assert SampledClassifier.load(out / "random-keep0.5-seed0" / "model.pt").meta["split"]["test"] == record["test"]
    with (out / "tiny.csv").open() as f:
        assert [r["method"] for r in csv.DictReader(f)] == ["random", "uniform", "das"]
    log = (out / "compare.log").read_text()
    assert "split: the one recorded in" in log and "the summary covers the 3 finished run(s)" in log


# --- 3. no silent data decisions ---------------------------------------------------------------


def test_unknown_labels_are_an_error_listing_every_row_unless_dropped(lung, tmp_path, capsys):
    root = lung["root"]
    rows = (root / "index.csv").read_text().splitlines()
    rows[1] = rows[1].replace(",dark", ",Dark")  # a case difference
    rows[3] = rows[3].replace(",dark", ",drak")
    rows[5] = rows[5].replace(",dark", ",drak")
    (root / "typos.csv").write_text("\n".join(rows) + "\n")
    config = video_config(root, "typos.yaml", path=str(root / "typos.csv"), classes=["dark", "bright"])
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "3 row(s) have a label that is not in data.classes ['dark', 'bright']" in err[0]
    assert "'Dark' (did you mean 'dark'?) in row 2" in err[0]
    assert "'drak' (did you mean 'dark'?) in rows 4, 6" in err[0] and "data.drop_unknown: true" in err[0]

    assert (
        main(["train", "--config", str(config), "--out", str(tmp_path / "r"), "--set", "data.drop_unknown=true"]) == 0
    )
    log = (tmp_path / "r" / "train.log").read_text()
    assert re.search(r"\d\d warning: 3 of 12 rows of .*typos\.csv left out \(data\.drop_unknown\)", log)


def test_missing_files_are_counted_with_the_folder_they_were_looked_for_in(lung, capsys, tmp_path):
    root = lung["root"]
    text = (root / "index.csv").read_text()
    (root / "gone.csv").write_text(text + "".join(f"videos/gone{i}.mp4,dark\n" for i in range(7)))
    config = video_config(root, "gone.yaml", path=str(root / "gone.csv"))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"7 of 19 rows name video files that do not exist, looked for under {root} (the CSV's folder" in err[0]
    assert "row 14 videos/gone0.mp4, row 15 videos/gone1.mp4" in err[0] and "and 2 more" in err[0]


def test_a_relative_data_path_names_the_folder_it_was_looked_for_in_and_where_to_get_the_data(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    config = write_config(
        tmp_path / "lung.yaml",
        {"kind": "videos", "path": "lung.csv", "origin": "LUS videos from https://example.org/lus"},
    )
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"looked for {tmp_path / 'lung.csv'}" in err[0]
    assert "relative to the working directory, not to the config file's folder" in err[0]
    assert "this config's data: LUS videos from https://example.org/lus" in err[0] and "--set data.root=" in err[0]


def test_data_root_comes_from_one_setting(lung, tmp_path, monkeypatch):
    folder = lung["root"].name
    config = write_config(
        tmp_path / "env.yaml",
        {
            "kind": "videos",
            "root": "${DAS_TEST_DATA:-/nonexistent}/" + folder,
            "path": "index.csv",
            "label_column": "label",
        },
    )
    monkeypatch.setenv("DAS_TEST_DATA", str(lung["root"].parent))
    loaded = load_config(config, overrides=["data.cache_dir=" + str(tmp_path / "cache")])
    assert loaded.data.root == str(lung["root"]) and loaded.data.file == lung["root"] / "index.csv"
    assert load_dataset(loaded.data).class_names == ("bright", "dark")
    assert load_config(config, overrides=["data.root=/elsewhere"]).data.file == Path("/elsewhere/index.csv")
    monkeypatch.delenv("DAS_TEST_DATA")
    assert load_config(config).data.root == f"/nonexistent/{folder}"
    bare = write_config(tmp_path / "bare.yaml", {"kind": "videos", "root": "${DAS_TEST_UNSET}", "path": "i.csv"})
    with pytest.raises(ConfigError, match=r"uses \$\{DAS_TEST_UNSET\}, which is not set; export DAS_TEST_UNSET="):
        load_config(bare)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("train_*.yaml")), ids=lambda p: p.name)
def test_every_bundled_training_config_says_where_its_data_comes_from(path, monkeypatch):
    raw = yaml.safe_load(path.read_text())
    if raw["data"]["kind"] == "synthetic":
        return
    assert "DAS_STREAM_DATA" in raw["data"]["root"] and not Path(raw["data"]["path"]).is_absolute()
    monkeypatch.setenv("DAS_STREAM_DATA", "/nonexistent-data")
    config = load_config(path)
    assert str(config.data.file).startswith("/nonexistent-data/")
    with pytest.raises(DataError) as err:
        load_dataset(config.data)
    message = str(err.value)
    assert "\n" not in message and config.data.origin in message and "https://" in message
    assert "docs/data.md" in message and "DAS_STREAM_DATA" in message


def test_log_lines_have_one_format_and_warnings_say_so(lung, capsys):
    lines = (lung["run"] / "train.log").read_text().splitlines()
    assert lines and all(STAMP.match(line) for line in lines)
    texts = [STAMP.sub("", line) for line in lines]
    assert all(t.startswith(("warning:", "note:")) for t in texts if "warning" in t.split(":")[0] or "note" in t[:5])
    assert any(t.startswith("epoch 1/1") and "distinct_picks" in t for t in texts)
    log_warnings_as_lines()
    logging.getLogger("sampler.anything").warning("no weights here")
    log_warnings_as_lines()  # again: still one line per warning
    logging.getLogger("sampler.anything").warning("once")
    err = capsys.readouterr().err.splitlines()
    assert STAMP.match(err[0]) and err[0].endswith(" warning: no weights here") and len(err) == 2


def test_a_resize_between_data_size_and_input_size_is_stated(lung, tmp_path):
    run = tmp_path / "r"
    assert main(["train", "--config", str(lung["config"]), "--out", str(run), "--set", "model.input_size=32"]) == 0
    log = (run / "train.log").read_text()
    assert "note: the frames are 16 px (data.size" in log and "resized from 16 to 32 px" in log
    assert "resized from" not in (lung["run"] / "train.log").read_text()


# --- 4. outputs you can trust -----------------------------------------------------------------


def test_evaluate_writes_a_new_folder_per_run_and_leaves_training_outputs_alone(lung, tmp_path):
    selection = (lung["run"] / "selection-test.png").read_bytes()
    before = {p.name for p in lung["run"].iterdir()}
    assert main(["evaluate", "--model", str(lung["model"])]) == 0
    assert main(["evaluate", "--model", str(lung["model"])]) == 0
    new = sorted({p.name for p in lung["run"].iterdir()} - before)
    assert len(new) == 2 and all(n.startswith("eval-test-") for n in new)
    assert (lung["run"] / "selection-test.png").read_bytes() == selection
    for n in new:
        assert predicted_names(lung["run"] / n) == recorded(lung["model"], "test")
        shutil.rmtree(lung["run"] / n)
    out = tmp_path / "e"
    assert main(["evaluate", "--model", str(lung["model"]), "--out", str(out)]) == 0
    assert main(["evaluate", "--model", str(lung["model"]), "--out", str(out)]) == 2
    assert main(["evaluate", "--model", str(lung["model"]), "--out", str(out), "--overwrite"]) == 0


def test_the_run_folders_config_records_what_was_used(lung, tmp_path, monkeypatch):
    text = (lung["run"] / "config.yaml").read_text()
    saved = yaml.safe_load(text)
    assert saved["train"]["device"] == "cpu" and saved["train"]["threads"] == 1
    assert saved["data"]["classes"] == ["bright", "dark"] and Path(saved["data"]["path"]).is_absolute()
    run = tmp_path / "mobile"
    argv = ["train", "--config", str(lung["config"]), "--out", str(run)]
    auto = ["--set", "model.backbone=mobilenet_v3_small", "--set", "model.backbone_weights=auto"]
    assert main([*argv, *auto, "--set", "model.input_size=32", "--set", "train.threads=0"]) == 0
    text = (run / "config.yaml").read_text()
    saved = yaml.safe_load(text)
    used = SampledClassifier.load(run / "model.pt").meta["training"]["backbone_weights_used"]
    assert saved["model"]["backbone_weights"] == used != "auto" and saved["train"]["threads"] == auto_threads()
    assert f"model.backbone_weights 'auto' -> '{used}'" in text.splitlines()[1]
    # Resolved paths: evaluate works from another working directory.
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--model", str(run / "model.pt"), "--out", "e"]) == 0


def test_default_threads_leave_room_when_the_cores_are_shared(tmp_path):
    before = torch.get_num_threads()
    try:
        config = load_config(write_config(tmp_path / "c.yaml", {"kind": "synthetic"}, train={"threads": 0}))
        assert set_threads(config) == auto_threads() == torch.get_num_threads()
        assert auto_threads() == max(1, len(__import__("os").sched_getaffinity(0)) // 2)
    finally:
        torch.set_num_threads(before)


# --- 5. long work you can watch and resume ---------------------------------------------------


def test_compare_folds_continues_an_interrupted_run_from_its_checkpoint(lung, tmp_path, monkeypatch, capsys):
    from training import runs

    out = tmp_path / "cv"
    argv = ["compare", "--config", str(lung["config"]), "--folds", "2", "--methods", "uniform", "--seeds", "0"]
    argv += ["--keeps", "0.5", "--epochs", "2", "--set", "train.patience=5", "--out", str(out)]
    argv += ["--set", r"data.group_regex=(pat\d+)"]
    write = runs.RunLog.__call__

    def interrupted(self, line):  # Ctrl-C while fold 1's run finishes epoch 2
        if line.startswith("epoch 2/2") and "fold1" in str(self.path):
            raise KeyboardInterrupt
        write(self, line)

    monkeypatch.setattr(runs.RunLog, "__call__", interrupted)
    assert main(argv) == 130
    assert f"continue with: das-stream compare --config {lung['config']}" in capsys.readouterr().err
    run = out / "fold1" / "uniform-keep0.5-seed0"
    assert (run / "checkpoint.pt").is_file() and not (run / "result.json").exists()
    monkeypatch.setattr(runs.RunLog, "__call__", write)
    assert main([*argv, "--resume"]) == 0
    log = (run / "train.log").read_text()
    assert "resumed from" in log and "after epoch 1" in log and log.count("epoch 2/2") == 1
    compare_log = (out / "compare.log").read_text()
    assert "1 run(s) trained, 1 skipped (result existed, --resume)" in compare_log
    result = json.loads((run / "result.json").read_text())
    assert f"video-level test auc {result['test']['auc']:.3f}" in compare_log  # the score the tables use
    assert "(folds x seeds)" in (out / "tiny.md").read_text()
    folds = json.loads((out / "folds.json").read_text())["folds"]
    assert len(folds) == 2 and SampledClassifier.load(run / "model.pt").meta["split"]["test"] == folds[1]["test"]


def test_embeddings_are_written_in_chunks_and_an_interrupted_embedding_continues(tmp_path, monkeypatch):
    from training.protocol import frozen

    model = SampledClassifier.load(Path(__file__).resolve().parents[2] / "streamer" / "assets" / "demo.pt")
    videos = [np.random.default_rng(i).integers(0, 255, (n, 32, 32), dtype=np.uint8) for i, n in enumerate((6, 5))]
    monkeypatch.setattr(frozen, "CHUNK", 4)
    embed = frozen.embed_frames
    calls = []

    def cut_short(classifier, frames, **kw):
        calls.append(len(frames))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return embed(classifier, frames, **kw)

    monkeypatch.setattr(frozen, "embed_frames", cut_short)
    with pytest.raises(KeyboardInterrupt):
        frozen.embed_videos(
            videos, np.array([0, 1]), ["a", "b"], classifier=model.classifier, feature_size=16, cache_dir=tmp_path
        )
    assert [p.name for p in tmp_path.glob("emb-*.partial/*.npy")] == ["rows-000000000.npy"]
    monkeypatch.setattr(frozen, "embed_frames", embed)
    lines: list[str] = []
    again = frozen.embed_videos(
        videos,
        np.array([0, 1]),
        ["a", "b"],
        classifier=model.classifier,
        feature_size=16,
        cache_dir=tmp_path,
        log=lines.append,
    )
    assert any("4 of 11 frames were embedded before" in line for line in lines)
    assert re.search(r"embedding: 11/11 frames \(100%\), \d+ ms/frame", lines[-1])
    assert not list(tmp_path.glob("*.partial")) and len(list(tmp_path.glob("emb-*.npz"))) == 1
    whole = embed(model.classifier, np.concatenate(videos))
    assert np.allclose(np.concatenate(again.emb), whole, atol=1e-5)


def test_tables_say_what_they_count(tmp_path):
    from training.metrics import Scores
    from training.protocol.paired import paired_markdown, paired_table, write_summary_with_diffs
    from training.report import RunResult, markdown_table, summarize

    def result(method, keep, fold, auc):
        return RunResult(
            "toy", method, keep, 0, 4, 8, Scores(0.5, 50), Scores(auc, 60), 0.6, 1, 1, 4.0, 1.0, "cpu", fold
        )

    results = [result("full", 1.0, f, 0.9) for f in range(3)]
    for keep, base in ((0.125, 0.6), (0.5, 0.7)):
        results += [result("uniform", keep, f, base + 0.01 * f) for f in range(3)]
        results += [result("das", keep, f, base + 0.05) for f in range(3)]
    rows = summarize(results)
    md = markdown_table(rows, over="folds x seeds")
    assert "| toy | 12.5% |" in md and "| toy | 12% |" not in md and "runs (folds x seeds)" in md
    diffs = paired_table(results)
    full = {d.keep: d for d in diffs if (d.method, d.baseline, d.metric) == ("full", "uniform", "auc")}
    assert full[0.125].diff_mean == pytest.approx(0.29) and full[0.5].diff_mean == pytest.approx(0.19)
    assert "| toy | 12.5% | Full - Uniform | AUC |" in paired_markdown(diffs)
    write_summary_with_diffs(rows, results, tmp_path / "s.csv")
    with (tmp_path / "s.csv").open() as f:
        full_row = next(r for r in csv.DictReader(f) if r["method"] == "full")
    assert full_row["diff_vs_uniform"] == ""  # two Uniform keeps: Full - Uniform is in the paired table, per keep


# --- 7. figures a reader can read ---------------------------------------------------------------


def test_the_selection_figure_stays_legible_at_t_64(tmp_path):
    from matplotlib.image import imread

    from training.report import plot_selection

    t, n = 64, 4
    rng = np.random.default_rng(0)
    indices = np.sort(rng.choice(t, size=(n, 16)), axis=1)
    valid = np.ones((n, t), dtype=bool)
    valid[0, 50:] = False
    plot_selection(
        indices=indices,
        valid=valid,
        labels=np.array([0, 1, 0, 1]),
        class_names=["covid", "regular"],
        clips=rng.integers(0, 255, (n, t, 32, 32), dtype=np.uint8),
        path=tmp_path / "s.png",
        title="pocus das k=16/64 seed 0, test split",
        names=[f"video{i}.mp4" for i in range(n)],
    )
    height, width = imread(tmp_path / "s.png").shape[:2]
    assert width <= 1400 and height <= 1600  # rows of 16 thumbnails, not one strip of 64 (2,365 px wide before)


def test_docs_list_every_data_key_with_its_default():
    import dataclasses

    from training.config import DataConfig

    text = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text()
    section = text[text.index("## Every `data.*` key") :]
    section = section[: section.index("\n## ", 5)]
    rows = {
        line.split("|")[1].strip().strip("`"): line.split("|")[2].strip()
        for line in section.splitlines()
        if line.startswith("| `")
    }
    assert set(rows) == {f.name for f in dataclasses.fields(DataConfig)}
    assert all(rows.values())  # a default (or what stands for it) in every row
