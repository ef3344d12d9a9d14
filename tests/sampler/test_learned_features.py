"""DAS with the learned feature pathway: it trains end to end, stays within 5 % of the
classifier's cost per window, and survives a save / load round trip."""

from __future__ import annotations

import pytest
import torch

from core.errors import SamplerError
from sampler.classifier import FrameClassifier
from sampler.das import DASSampler
from sampler.learned_features import LearnedFrameFeatures, count_macs
from sampler.model import ModelConfig, SampledClassifier, build_model


def test_count_macs_matches_a_hand_count():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, stride=2, padding=1), torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3)
    )
    # conv: 2 x 4 x 4 outputs x 9 weights = 288; linear: 3 outputs x 32 inputs = 96
    assert count_macs(net, torch.zeros(1, 1, 8, 8)) == 288 + 96


@pytest.mark.parametrize(
    ("backbone", "size", "t", "k"),
    [("tiny_cnn", 32, 16, 4), ("tiny_cnn", 32, 16, 2), ("mobilenet_v3_small", 112, 16, 2), ("tiny_cnn", 32, 64, 8)],
)
def test_learned_pathway_costs_at_most_5_percent_of_the_classifier(backbone, size, t, k):
    learned = count_macs(LearnedFrameFeatures(), torch.zeros(1, t, 1, size, size))
    classifier = count_macs(
        FrameClassifier(3, input_size=size, backbone=backbone).eval(), torch.zeros(1, k, 1, size, size)
    )
    assert learned <= 0.05 * classifier, (learned, classifier)


@pytest.mark.parametrize("features", ["learned", "both"])
def test_learned_features_get_gradients_end_to_end(features):
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            method="das",
            num_frames=8,
            k=3,
            class_names=("a", "b"),
            feature_size=16,
            input_size=32,
            backbone="tiny_cnn",
            sampler={"features": features},
        )
    )
    model.train()
    x = torch.rand(4, 8, 1, 32, 32)
    logits, out = model(x)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1])).backward()
    conv = model.sampler.learned.features.net[0].weight
    assert conv.grad is not None and conv.grad.abs().sum() > 0
    assert out.indices.shape == (4, 3)


def test_learned_features_round_trip_and_bad_option(tmp_path):
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            method="das",
            num_frames=8,
            k=3,
            class_names=("a", "b"),
            feature_size=16,
            input_size=32,
            backbone="tiny_cnn",
            sampler={"features": "both"},
        )
    ).eval()
    model.save(tmp_path / "m.pt")
    again = SampledClassifier.load(tmp_path / "m.pt").eval()
    x = torch.rand(2, 8, 1, 32, 32)
    assert torch.equal(model(x)[0], again(x)[0])
    with pytest.raises(SamplerError, match="hand, learned or both"):
        DASSampler(num_frames=8, k=3, features="pixels")


def test_runtime_cannot_use_hand_features_alone_for_a_learned_das():
    hand = DASSampler(num_frames=8, k=3, feature_size=16)
    learned = DASSampler(num_frames=8, k=3, feature_size=16, features="both")
    assert hand.uses_frame_features
    assert not learned.uses_frame_features  # the streaming engine then passes the frames to select(x)
    with pytest.raises(SamplerError, match="need the frames"):
        learned.attention_from_features(torch.zeros(1, 8, 4), torch.ones(1, 8, dtype=torch.bool))
