"""FrameClassifier on real tensors: embedding, pooling, weights handling."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from sampler import ModelFileError, SamplerError
from sampler.backbones import BACKBONES
from sampler.backbones.mobilenet import imagenet_cache_path
from sampler.classifier import FrameClassifier, frame_classifier


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """A torch hub cache without any weights, so nothing is found and nothing is downloaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def test_embed_classify_and_forward_agree():
    torch.manual_seed(0)
    clf = FrameClassifier(3, input_size=32).eval()
    frames = torch.rand(2, 4, 1, 40, 40)
    emb = clf.embed(frames.flatten(0, 1))
    assert emb.shape == (8, 576)
    logits = clf.classify(emb.view(2, 4, -1))
    assert logits.shape == (2, 3)
    assert torch.allclose(clf(frames), logits, atol=1e-5)


def test_uint8_gray_and_rgb_frames_embed_like_their_float_copies():
    torch.manual_seed(0)
    clf = FrameClassifier(2, input_size=32).eval()
    gray = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    rgb = gray.expand(-1, 3, -1, -1)
    as_float = gray.float() / 255
    assert torch.allclose(clf.embed(gray), clf.embed(as_float), atol=1e-5)
    assert torch.allclose(clf.embed(rgb), clf.embed(as_float), atol=1e-5)


def test_mask_excludes_padding_from_the_pooling():
    torch.manual_seed(0)
    clf = FrameClassifier(2, input_size=32, embed_dim=16).eval()
    emb = torch.randn(1, 4, 16)
    mask = torch.tensor([[True, True, False, False]])
    junk = emb.clone()
    junk[0, 2:] = 100.0
    assert torch.allclose(clf.classify(emb, mask), clf.classify(junk, mask))
    assert torch.allclose(clf.classify(emb, mask), clf.classify(emb[:, :2]))
    weights = clf.pool.weights(emb, torch.zeros(1, 4, dtype=torch.bool))  # nothing valid: pool over all
    assert torch.isfinite(weights).all() and (weights > 0).all()


def test_projection_when_embed_dim_is_not_576():
    clf = FrameClassifier(2, input_size=32, embed_dim=64)
    assert clf.embed(torch.rand(5, 1, 32, 32)).shape == (5, 64)


def test_auto_weights_fall_back_to_random_init_with_a_warning(empty_torch_home, caplog):
    with caplog.at_level(logging.WARNING, logger="sampler.backbones.mobilenet"):
        clf = frame_classifier(2, input_size=32, weights="auto")
    assert clf.weights_source == "none"
    assert (
        "no ImageNet weights" in caplog.text and "model.backbone_weights: PATH (weights=PATH in Python)" in caplog.text
    )
    assert not imagenet_cache_path().exists()  # nothing was downloaded
    assert str(empty_torch_home) in str(imagenet_cache_path())


def test_auto_weights_are_used_when_the_cache_has_them(empty_torch_home):
    torch.manual_seed(1)
    reference = torchvision.models.mobilenet_v3_small(weights=None)
    cached = imagenet_cache_path()
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    clf = frame_classifier(2, input_size=32, weights="auto")
    assert clf.weights_source == "imagenet"
    assert torch.equal(clf.backbone[0][0].weight, reference.features[0][0].weight)


@pytest.mark.parametrize("features_only", [False, True])
def test_weights_from_a_state_dict_file(tmp_path, features_only):
    torch.manual_seed(2)
    reference = torchvision.models.mobilenet_v3_small(weights=None)
    path = tmp_path / "backbone.pth"
    torch.save((reference.features if features_only else reference).state_dict(), path)
    clf = frame_classifier(2, input_size=32, weights=path)
    assert clf.weights_source == str(path)
    for ours, theirs in zip(clf.backbone.state_dict().values(), reference.features.state_dict().values()):
        assert torch.equal(ours, theirs)


def test_bad_weights_files_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ModelFileError, match="nope.pth does not exist"):
        frame_classifier(2, weights=missing)
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(3)}, foreign)
    with pytest.raises(ModelFileError, match="foreign.pth are not a mobilenet_v3_small state_dict"):
        frame_classifier(2, weights=foreign)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(ModelFileError, match="garbage.pth cannot be read"):
        frame_classifier(2, weights=garbage)


def test_bad_frames_raise_value_errors():
    clf = FrameClassifier(2, input_size=32)
    with pytest.raises(ValueError, match=r"C in \{1, 3\}"):
        clf.embed(torch.rand(2, 2, 32, 32))
    with pytest.raises(ValueError, match=r"rank 4"):
        clf(torch.rand(2, 1, 32, 32))
    nan = torch.rand(1, 2, 1, 32, 32)
    nan[0, 1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        clf(nan)
    with pytest.raises(SamplerError, match="at least 2 classes"):
        FrameClassifier(1)


def test_tiny_cnn_backbone_embeds_and_has_no_imagenet_weights(tmp_path):
    torch.manual_seed(0)
    clf = FrameClassifier(2, input_size=16, backbone="tiny_cnn")
    assert clf.embed(torch.rand(3, 1, 16, 16)).shape == (3, 128)
    path = tmp_path / "tiny.pth"
    torch.save(clf.backbone.state_dict(), path)
    again = frame_classifier(2, input_size=16, backbone="tiny_cnn", weights=path)
    assert torch.equal(again.backbone[0].weight, clf.backbone[0].weight)
    with pytest.raises(SamplerError, match="no ImageNet weights for the tiny_cnn backbone"):
        frame_classifier(2, backbone="tiny_cnn", weights="imagenet")
    with pytest.raises(SamplerError, match="unknown backbone 'vgg'"):
        FrameClassifier(2, backbone="vgg")


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_record_builds_what_it_says(name):
    spec = BACKBONES[name]
    maps = spec.build().eval()(torch.rand(2, 3, 32, 32))
    assert maps.dim() == 4 and maps.shape[:2] == (2, spec.dim)
    clf = FrameClassifier(2, backbone=name)  # no input_size: the record's
    assert clf.input_size == spec.input_size
    assert clf.mean.flatten().tolist() == pytest.approx(spec.mean)


def test_auto_weights_of_a_backbone_without_pretrained_ones_mean_random_init():
    assert frame_classifier(2, input_size=16, backbone="tiny_cnn", weights="auto").weights_source == "none"
