"""Loaders on small files in the official formats: MedMNIST 3D npz, and real videos + CSV."""

from __future__ import annotations

import json

import numpy as np
import pytest
from training_help import SPLIT_SIZES, write_npz, write_video

from core.errors import DataError
from training.config import DataConfig
from training.datasets import fit_length, load_medmnist3d, load_video_dataset, make_synthetic_dataset, stratified_split


def test_medmnist3d_volumes_become_slice_sequences(tmp_path):
    data = load_medmnist3d(write_npz(tmp_path / "tiny.npz", depth=8, size=16), class_names=["normal", "hyper"])
    assert data.class_names == ("normal", "hyper")
    assert [len(data.split(s)) for s in ("train", "val", "test")] == list(SPLIT_SIZES.values())
    x, valid, label = data.train[1]
    assert x.shape == (8, 1, 16, 16) and x.dtype.is_floating_point is False
    assert valid.all() and label == 1
    assert int(x[3].max()) == 230 and int(data.train[0][0].max()) < 60  # the class-1 cube is on slices 2..4


def test_medmnist3d_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"missing\.npz not found; set data.path"):
        load_medmnist3d(tmp_path / "missing.npz")
    with pytest.raises(DataError, match=r"lacks keys val_labels, test_images; expected the official MedMNIST layout"):
        load_medmnist3d(write_npz(tmp_path / "partial.npz", drop=("val_labels", "test_images")))
    bad_labels = np.array([[0], [1], [2], [1], [0], [1], [0], [1]], dtype=np.uint8)
    with pytest.raises(DataError, match=r"labels in test_labels \[0, 1, 2\] differ from train_labels \[0, 1\]"):
        load_medmnist3d(write_npz(tmp_path / "labels.npz", test_labels=bad_labels))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataError, match=r"text\.npz is not a readable npz"):
        load_medmnist3d(tmp_path / "text.npz")
    flat = np.zeros((16, 16, 16), np.uint8)
    with pytest.raises(DataError, match=r"train_images has shape \(16, 16, 16\); expected \(N, D, H, W\)"):
        load_medmnist3d(write_npz(tmp_path / "flat.npz", train_images=flat))


def test_fit_length_cuts_subsamples_and_pads():
    frames = np.arange(10, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    cut, valid = fit_length(frames, 4, policy="cut")
    assert cut[:, 0, 0].tolist() == [0, 1, 2, 3] and valid.all()
    spread, _ = fit_length(frames, 4, policy="subsample")
    assert spread[:, 0, 0].tolist() == [0, 3, 6, 9]
    padded, valid = fit_length(frames[:3], 5, policy="cut")
    assert padded[:, 0, 0].tolist() == [0, 1, 2, 0, 0] and valid.tolist() == [True] * 3 + [False] * 2


def test_stratified_split_is_by_sample_fixed_and_covers_every_class():
    labels = np.array([0] * 10 + [1] * 6 + [2] * 3)
    parts = stratified_split(labels, fractions=(0.6, 0.2, 0.2), seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))  # each sample exactly once
    assert all(set(labels[p]) == {0, 1, 2} for p in parts)
    again = stratified_split(labels, fractions=(0.6, 0.2, 0.2), seed=3)
    assert all((a == b).all() for a, b in zip(parts, again))
    other = stratified_split(labels, fractions=(0.6, 0.2, 0.2), seed=4)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(parts, other))


@pytest.fixture()
def video_index(tmp_path):
    """Nine real videos (3 classes x 3) at 10, 20 and 30 fps, one of them short, and the CSV."""
    folder = tmp_path / "videos"
    folder.mkdir()
    rows = ["path,class_from_prefix"]
    for c, (name, level) in enumerate([("regular", 60), ("covid", 130), ("pneumonia", 200)]):
        for j, fps in enumerate((10, 20, 30)):
            frames = 5 if (c, j) == (0, 0) else 2 * fps  # 0.5 s for the first video, 2 s for the others
            write_video(
                folder / f"{name}_{j}.mp4", [level] * frames, fps=fps, size=(48, 32), split_halves=(c, j) == (2, 2)
            )
            rows.append(f"{name}_{j}.mp4,{name}")
    (folder / "index.csv").write_text("\n".join(rows) + "\n")
    return folder / "index.csv"


def video_config(index, tmp_path, **changes) -> DataConfig:
    settings = {
        "kind": "videos",
        "path": str(index),
        "fps": 10.0,
        "size": 16,
        "num_frames": 8,
        "cache_dir": str(tmp_path / "cache"),
    }
    return DataConfig(**{**settings, **changes})


def test_videos_are_resampled_resized_padded_and_split_by_video(video_index, tmp_path):
    config = video_config(video_index, tmp_path)
    data = load_video_dataset(config)
    assert data.class_names == ("covid", "pneumonia", "regular")
    names = [n for s in ("train", "val", "test") for n in data.split(s).names]
    assert sorted(names) == sorted(f"{c}_{j}.mp4" for c in ("regular", "covid", "pneumonia") for j in range(3))
    for split in ("train", "val", "test"):
        clips = data.split(split)
        assert clips.x.shape[1:] == (8, 16, 16)
        assert set(clips.labels.tolist()) == {0, 1, 2}  # stratified: every class in every split
    everything = {
        n: (x, v)
        for s in ("train", "val", "test")
        for n, x, v in zip(data.split(s).names, data.split(s).x, data.split(s).valid)
    }
    x, valid = everything["regular_0.mp4"]  # 5 frames at 10 fps -> 5 real frames + 3 empty ones
    assert valid.tolist() == [True] * 5 + [False] * 3
    assert abs(float(x[:5].mean()) - 60) < 6 and x[5:].max() == 0
    for j in (1, 2):  # 2 s at 20 or 30 fps -> 20 frames at 10 fps -> cut to the first 8
        assert everything[f"covid_{j}.mp4"][1].all()
    assert len(list((tmp_path / "cache").glob("videos-*.npz"))) == 1

    again = load_video_dataset(config)  # read back from the cache
    assert (again.train.x == data.train.x).all() and again.train.names == data.train.names
    # Other preprocessing settings -> another cache entry, other frames.
    small = load_video_dataset(video_config(video_index, tmp_path, size=8))
    assert small.train.x.shape[2:] == (8, 8)
    assert len(list((tmp_path / "cache").glob("videos-*.npz"))) == 2


def test_crop_file_boxes_are_applied(video_index, tmp_path):
    # pneumonia_2.mp4 is bright on the left half and black on the right half (48 x 32 pixels).
    crops = {"pneumonia_2.mp4": [[0, 24, 24], [0, 0]]}  # [[top, left, size], [start, end (0: to the end)]]
    (tmp_path / "crop.json").write_text(json.dumps(crops))
    data = load_video_dataset(video_config(video_index, tmp_path, crop_file=str(tmp_path / "crop.json")))
    clip = {n: x for s in ("train", "val", "test") for n, x in zip(data.split(s).names, data.split(s).x)}
    assert clip["pneumonia_2.mp4"].mean() < 20  # only the black half is left
    assert clip["pneumonia_1.mp4"].mean() > 150


def test_video_index_errors(video_index, tmp_path):
    text = video_index.read_text()
    missing = video_index.with_name("missing.csv")
    missing.write_text(text + "nowhere.mp4,covid\n")
    with pytest.raises(
        DataError, match=r"missing\.csv: 1 of 10 rows name video files that do not exist.*row 11 nowhere\.mp4"
    ):
        load_video_dataset(video_config(missing, tmp_path))

    (video_index.parent / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    broken = video_index.with_name("broken.csv")
    broken.write_text(text + "broken.mp4,covid\n")
    with pytest.raises(DataError, match=r"video .*broken\.mp4 \(CSV row 11\) cannot be used"):
        load_video_dataset(video_config(broken, tmp_path))

    few = video_index.with_name("few.csv")
    few.write_text(text + "covid_0.mp4,viral\n")
    with pytest.raises(DataError, match=r"class viral \(1\) has fewer than 3 videos"):
        load_video_dataset(video_config(few, tmp_path))
    # Leaving the small class out is the fix the message names; its row is then an unknown label,
    # an error unless data.drop_unknown says to leave such rows out.
    with pytest.raises(DataError, match=r"1 row\(s\) have a label that is not in data.classes .*'viral' in row 11"):
        load_video_dataset(video_config(few, tmp_path, classes=("covid", "pneumonia", "regular")))
    data = load_video_dataset(video_config(few, tmp_path, classes=("covid", "pneumonia", "regular"), drop_unknown=True))
    assert data.class_names == ("covid", "pneumonia", "regular")
    assert data.notes[0].startswith("warning: 1 of 10 rows of") and "'viral' 1 row" in data.notes[0]

    with pytest.raises(DataError, match=r"has no column 'label'"):
        load_video_dataset(video_config(video_index, tmp_path, label_column="label"))


def test_synthetic_dataset_is_balanced_and_seeded():
    config = DataConfig(kind="synthetic", size=32, num_frames=6, synthetic_counts=(6, 3, 3), split_seed=1)
    data = make_synthetic_dataset(config)
    assert data.train.x.shape == (6, 6, 32, 32)
    assert np.bincount(data.train.labels).tolist() == [2, 2, 2]
    assert (make_synthetic_dataset(config).test.x == data.test.x).all()
    assert not (data.val.x == data.test.x).all()
