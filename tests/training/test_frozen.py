"""Training with a frozen backbone (sampler/training/frozen.py): embedded windows give the same
answers as the pixels, they are cut as the runtime cuts them, the table is cached, and
``compare --folds`` runs on them end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from training_help import compare_argv, write_config, write_video_index

from das_stream.cli import main
from sampler.model import ModelConfig, SampledClassifier, build_model
from training.clips import windows_of_videos
from training.protocol.frozen import (
    embed_frames,
    embed_videos,
    embedded_windows,
    shrink,
)
from training.video_eval import RandomWindowSet, evaluate_videos


def _model(method: str, *, size: int = 16, seed: int = 0) -> SampledClassifier:
    torch.manual_seed(seed)
    config = ModelConfig(
        method=method,
        num_frames=8,
        k=8 if method == "full" else 3,
        class_names=("a", "b", "c"),
        feature_size=size,
        input_size=size,
        backbone="tiny_cnn",
    )
    return build_model(config).eval()


def _frames(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (n, size, size), dtype=np.uint8)
    frames[: n // 3] //= 8  # some dark frames, so the picks are not arbitrary
    return frames


@pytest.mark.parametrize("method", ["das", "uniform", "dps", "full"])
def test_embedded_forward_equals_the_pixel_forward(method):
    model = _model(method)
    frames = _frames(16)
    x = torch.from_numpy(frames).view(2, 8, 1, 16, 16)
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[1, 6:] = False
    x[1, 6:] = 0
    emb = torch.from_numpy(embed_frames(model.classifier, frames)).view(2, 8, -1)
    with torch.no_grad():
        pixel_logits, pixel_picks = model(x, valid)
        logits, picks = model.forward_embedded(x, emb, valid)
    assert torch.equal(picks.indices, pixel_picks.indices)
    torch.testing.assert_close(logits, pixel_logits, rtol=1e-5, atol=1e-5)


def test_embedded_training_reaches_the_sampler_not_the_backbone():
    model = _model("das").train()
    frames = _frames(16)
    x = torch.from_numpy(frames).view(2, 8, 1, 16, 16)
    emb = torch.from_numpy(embed_frames(model.classifier, frames)).view(2, 8, -1)
    logits, _ = model.forward_embedded(x, emb)
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    sampler_grads = [p.grad for p in model.sampler.parameters() if p.requires_grad]
    assert sampler_grads and any(g is not None and g.abs().sum() > 0 for g in sampler_grads)
    assert all(p.grad is None for p in model.classifier.backbone.parameters())
    assert model.classifier.head[0].weight.grad.abs().sum() > 0


def test_embeddings_of_the_wrong_shape_are_refused():
    model = _model("das")
    x = torch.zeros(2, 8, 1, 16, 16, dtype=torch.uint8)
    with pytest.raises(Exception, match=r"embeddings must have shape \(B, T, D\)"):
        model.forward_embedded(x, torch.zeros(2, 7, 128))


def test_shrink_is_the_samplers_area_resize():
    frames = _frames(4, size=32)
    small = shrink(frames, 16)
    ref = F.interpolate(torch.from_numpy(frames)[:, None].float(), size=(16, 16), mode="area")[:, 0].numpy()
    assert small.shape == (4, 16, 16) and small.dtype == np.uint8
    assert np.abs(small.astype(float) - ref).max() <= 0.5
    assert shrink(frames, 32) is frames


def test_embedded_windows_are_the_runtime_windows_with_their_rows():
    model = _model("das")
    videos = [_frames(n, seed=n) for n in (5, 8, 13)]
    ev = embed_videos(videos, np.array([0, 1, 2]), ["v5", "v8", "v13"], classifier=model.classifier, feature_size=16)
    clips, owner = embedded_windows(ev, 8, 4)
    ref, ref_owner = windows_of_videos(videos, np.array([0, 1, 2]), ["v5", "v8", "v13"], 8, 4)
    assert (
        np.array_equal(clips.x, ref.x) and np.array_equal(clips.valid, ref.valid) and np.array_equal(owner, ref_owner)
    )
    assert clips.names == ref.names
    # each window's embeddings are its frames' rows; padding rows are zero
    w = list(clips.names).index("v13#1")  # frames 4..11 of the 13-frame video
    assert np.array_equal(clips.emb[w], ev.emb[2][4:12])
    last = list(clips.names).index("v5#0")  # 5 frames, 3 padded
    assert np.array_equal(clips.emb[last][:5], ev.emb[0]) and not clips.emb[last][5:].any()


def test_random_embedded_windows_carry_the_rows_of_their_frames():
    model = _model("das")
    videos = [_frames(30, seed=1), _frames(6, seed=2)]
    ev = embed_videos(videos, np.array([0, 1]), ["a", "b"], classifier=model.classifier, feature_size=16)
    ds = RandomWindowSet(ev.small, ev.labels, ev.names, 8, seed=3, embeddings=ev.emb)
    for _ in range(5):
        x, emb, valid, label = ds[0]
        start = next(s for s in range(23) if np.array_equal(videos[0][s : s + 8], x[:, 0].numpy()))
        assert np.array_equal(emb.numpy(), ev.emb[0][start : start + 8]) and bool(valid.all()) and label == 0
    x, emb, valid, label = ds[1]  # shorter than T: padded, masked
    assert valid.tolist() == [True] * 6 + [False] * 2 and not emb[6:].any() and label == 1
    one, two = (RandomWindowSet(ev.small, ev.labels, ev.names, 8, seed=3, embeddings=ev.emb) for _ in range(2))
    assert all(torch.equal(one[0][1], two[0][1]) for _ in range(4))  # the same seed draws the same windows


def test_pre_embedded_windows_cannot_be_corrupted_afresh():
    from training.corruptions import StreamCorruption

    videos = [_frames(10)]
    with pytest.raises(ValueError, match="embed a corrupted copy"):
        RandomWindowSet(
            videos,
            np.array([0]),
            ("a",),
            8,
            seed=0,
            corruption=StreamCorruption.from_options({}),
            embeddings=[np.zeros((10, 4), np.float32)],
        )


def test_the_embedding_table_is_cached_by_content(tmp_path):
    model = _model("das")
    videos = [_frames(6, seed=4)]
    lines: list[str] = []
    first = embed_videos(
        videos, np.array([0]), ["a"], classifier=model.classifier, feature_size=16, cache_dir=tmp_path, log=lines.append
    )
    again = embed_videos(
        videos, np.array([0]), ["a"], classifier=model.classifier, feature_size=16, cache_dir=tmp_path, log=lines.append
    )
    assert "embedding 6 frames" in lines[0] and "read from" in lines[-1]
    assert np.array_equal(first.emb[0], again.emb[0])
    other = [videos[0].copy()]
    other[0][0, 0, 0] ^= 1
    lines.clear()
    embed_videos(
        other, np.array([0]), ["a"], classifier=model.classifier, feature_size=16, cache_dir=tmp_path, log=lines.append
    )
    assert "embedding 6 frames" in lines[0] and len(list(tmp_path.glob("emb-*.npz"))) == 2
    # a damaged cache file is reported and replaced, not trusted
    for broken in tmp_path.glob("emb-*.npz"):
        broken.write_bytes(b"PK\x03\x04 not a zip")
    lines.clear()
    again = embed_videos(
        videos, np.array([0]), ["a"], classifier=model.classifier, feature_size=16, cache_dir=tmp_path, log=lines.append
    )
    assert "unreadable" in lines[0] and "embedding 6 frames" in lines[1] and np.array_equal(again.emb[0], first.emb[0])


def test_compare_folds_with_a_frozen_backbone_matches_the_pixel_path(tmp_path):
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
            "corruption": "both",
            "corruption_options": {"rate": 10},
            "cache_dir": str(tmp_path / "cache"),
        },
        model={"backbone": "tiny_cnn", "feature_size": 16, "input_size": 16},
        train={"freeze_backbone": True, "epochs": 2},
    )
    out = tmp_path / "cv"
    assert main(compare_argv(config, out, "uniform,das", folds=2)) == 0
    log = (out / "compare.log").read_text()
    assert (
        "frozen backbone tiny_cnn" in log and log.count("embedding ") == 2
    )  # clean and corrupted (one realisation per video)
    assert (out / "tiny-corrupted.csv").is_file()
    run = out / "fold1" / "das-keep0.5-seed0"
    r = json.loads((run / "result.json").read_text())
    assert r["fold"] == 1 and r["window_test"] is not None
    # the saved model is an ordinary model file: from the pixels it gives the same video probabilities
    model = SampledClassifier.load(run / "model.pt")
    with (run / "video-predictions-test.csv").open() as f:
        rows = list(csv.DictReader(f))
    from training.config import load_config
    from training.video_eval import load_whole_videos

    vs = load_whole_videos(load_config(config, overrides=["data.folds=2"]).data)
    index_of = {n: i for i, n in enumerate(vs.names)}
    ids = [index_of[row["video"]] for row in rows]
    videos, labels, names = vs.take(np.array(ids))
    ev = evaluate_videos(model, videos, labels, window=4, stride=2, names=names)
    stored = np.array([[float(row["p_dark"]), float(row["p_bright"])] for row in rows])
    np.testing.assert_allclose(ev.probs, stored, atol=2e-4)
    # a second run reads the cached tables instead of embedding again
    assert main(compare_argv(config, tmp_path / "cv2", "uniform", folds=2, seeds="1")) == 0
    assert (tmp_path / "cv2" / "compare.log").read_text().count("frame embeddings read from") == 2


def test_a_frozen_backbone_is_refused_where_it_does_not_apply(tmp_path, capsys):
    index = write_video_index(tmp_path)
    data = {
        "kind": "videos",
        "path": str(index),
        "label_column": "label",
        "classes": ["dark", "bright"],
        "fps": 10,
        "size": 16,
        "num_frames": 4,
        "cache_dir": str(tmp_path / "cache"),
    }
    config = write_config(tmp_path / "v.yaml", data, train={"freeze_backbone": True})
    assert (
        main(["train", "--config", str(config), "--set", "model.backbone=tiny_cnn", "--out", str(tmp_path / "r")]) == 2
    )
    assert "train.freeze_backbone" in capsys.readouterr().err  # no folds: refused by the config check
    folds = write_config(tmp_path / "f.yaml", {**data, "folds": 2}, train={"freeze_backbone": True})
    assert (
        main(["train", "--config", str(folds), "--set", "model.backbone=tiny_cnn", "--out", str(tmp_path / "r2")]) == 2
    )
    err = capsys.readouterr().err
    assert "compare --folds" in err and not (tmp_path / "r2").exists()  # train itself refuses it
