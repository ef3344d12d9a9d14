"""SampledClassifier: building, the one-file format, and its errors."""

from __future__ import annotations

import pytest
import torch

from sampler import ConfigError, DASSampler, DPSSampler, ModelFileError, UniformSampler
from sampler.model import METHODS, ModelConfig, SampledClassifier, build_model, build_sampler


def config(**overrides) -> ModelConfig:
    values = dict(method="das", num_frames=8, k=3, class_names=("normal", "abnormal"), feature_size=16, input_size=32)
    values.update(overrides)
    return ModelConfig(**values)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_builds_and_classifies(method):
    torch.manual_seed(0)
    k = 8 if method == "full" else 3
    model = build_model(config(method=method, k=k)).eval()
    x = torch.rand(2, 8, 1, 20, 20)
    logits, picks = model(x)
    assert logits.shape == (2, 2)
    assert picks.indices.shape == (2, k) and picks.frames.shape == (2, k, 1, 20, 20)
    probs = model.predict_proba(x)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2))


def test_uint8_windows_classify_like_float_windows():
    torch.manual_seed(0)
    model = build_model(config()).eval()
    x8 = torch.randint(0, 256, (2, 8, 1, 20, 20), dtype=torch.uint8)
    assert torch.allclose(model(x8)[0], model(x8.float() / 255)[0], atol=1e-5)


def test_padding_picked_for_short_windows_is_left_out_of_the_pooling():
    torch.manual_seed(0)
    model = build_model(config(method="uniform", k=4)).eval()
    x = torch.rand(1, 8, 1, 20, 20)
    x[0, 2:] = 0  # two real frames; the other two picks are padding
    other = x.clone()
    logits, picks = model(x)
    assert picks.indices[0, :2].tolist() == [0, 1]
    reference = model.classifier(x[:, :2])  # the real frames alone
    assert torch.allclose(logits, reference, atol=1e-5)
    assert torch.equal(model(other)[0], logits)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(config(sampler={"heads": 2, "hidden": 16}, classifier={"hidden": 32}, name="demo")).eval()
    path = tmp_path / "model.pt"
    model.save(path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "das-stream-model" and raw["version"] == 2
    assert raw["config"]["class_names"] == ["normal", "abnormal"]
    loaded = SampledClassifier.load(path).eval()
    assert loaded.config == model.config
    assert isinstance(loaded.sampler, DASSampler) and len(loaded.sampler.heads) == 2
    x = torch.rand(3, 8, 1, 20, 20)
    (la, pa), (lb, pb) = model(x), loaded(x)
    assert torch.equal(la, lb) and torch.equal(pa.indices, pb.indices)


def test_version_1_files_load_and_their_das_base_bias_was_inert(tmp_path):
    torch.manual_seed(0)
    model = build_model(config(sampler={"heads": 2}, backbone_weights="none")).eval()
    assert "sampler.base.2.bias" not in model.state_dict()
    old_config = {**model.config.to_dict(), "sampler_kwargs": {"heads": 2}, "classifier_kwargs": {}}
    del old_config["sampler"], old_config["classifier"]
    bias = torch.tensor([3.0])
    v1 = {"format": "das-stream-model", "version": 1, "config": old_config, "state_dict": model.state_dict()}
    v1["state_dict"]["sampler.base.2.bias"] = bias  # what DAS files of version 1 hold
    torch.save(v1, tmp_path / "v1.pt")
    loaded = SampledClassifier.load(tmp_path / "v1.pt").eval()
    assert loaded.config == model.config
    x = torch.rand(3, 8, 1, 20, 20)
    assert torch.equal(loaded(x)[0], model(x)[0])
    # The bias was inert: the old scores (a_base + b) * s give the soft picks the new ones give.
    att = loaded.sampler.attention(x)
    old = ((att.base + bias)[:, None, None, :] * att.scales.unsqueeze(3)).mean(dim=1)
    tau = att.tau[:, None, None]
    assert torch.allclose((old / tau).softmax(dim=2), (att.scores / tau).softmax(dim=2), atol=1e-6)
    # The same file as bytes (what a cluster ships to its replicas) loads the same model.
    from_bytes = SampledClassifier.load((tmp_path / "v1.pt").read_bytes()).eval()
    assert torch.equal(from_bytes(x)[0], model(x)[0])


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"missing\.pt does not exist"):
        SampledClassifier.load(tmp_path / "missing.pt")

    good = tmp_path / "good.pt"
    build_model(config(method="uniform")).save(good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileError, match=r"truncated\.pt is truncated or not a PyTorch file"):
        SampledClassifier.load(truncated)

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"empty\.pt is truncated"):
        SampledClassifier.load(empty)

    state_dict_only = tmp_path / "weights.pt"
    torch.save(UniformSampler(num_frames=4, k=2).state_dict(), state_dict_only)
    with pytest.raises(ModelFileError, match=r"weights\.pt is a PyTorch file but not a das-stream model"):
        SampledClassifier.load(state_dict_only)

    pickled_module = tmp_path / "module.pt"
    torch.save(DPSSampler(num_frames=4, k=2), pickled_module)
    with pytest.raises(ModelFileError, match=r"module\.pt is not a das-stream model"):
        SampledClassifier.load(pickled_module)

    future = tmp_path / "future.pt"
    payload = torch.load(good, weights_only=True)
    torch.save({**payload, "version": 99}, future)
    with pytest.raises(ModelFileError, match=r"future\.pt has format version 99"):
        SampledClassifier.load(future)

    mismatched = tmp_path / "mismatched.pt"
    torch.save({**payload, "config": {**payload["config"], "class_names": ["a", "b", "c"]}}, mismatched)
    with pytest.raises(ModelFileError, match=r"mismatched\.pt does not match"):
        SampledClassifier.load(mismatched)


def test_dps_logits_get_ten_times_the_learning_rate():
    model = build_model(config(method="dps"))
    groups = model.param_groups(1e-3)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-2)]
    assert groups[1]["params"] == [model.sampler.logits]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    das_groups = build_model(config()).param_groups(1e-3)
    assert len(das_groups) == 1


def test_bad_configs_raise_config_errors():
    with pytest.raises(ConfigError, match="unknown sampling method 'topk'"):
        config(method="topk")
    with pytest.raises(ConfigError, match="k must be between 1 and num_frames=8, got k=9"):
        config(k=9)
    with pytest.raises(ConfigError, match="set k equal to num_frames=8"):
        config(method="full", k=3)
    with pytest.raises(ConfigError, match="at least 2 distinct names"):
        config(class_names=("a", "a"))
    with pytest.raises(ConfigError, match="unknown backbone"):
        config(backbone="resnet50")
    with pytest.raises(ConfigError, match="unknown model config key"):
        ModelConfig.from_dict({**config().to_dict(), "extra": 1})
    with pytest.raises(ConfigError, match="bad option for the 'das' sampler"):
        build_sampler("das", 8, 3, 16, seed=1)
    with pytest.raises(ConfigError, match="num_frames must be an integer, got '32'"):
        config(num_frames="32")
    with pytest.raises(ConfigError, match="unknown classifier option"):
        config(classifier={"depth": 3})


def test_windows_that_do_not_fit_the_model_raise_value_errors():
    model = build_model(config())
    with pytest.raises(ValueError, match="T=6 frames but the sampler was built for num_frames=8"):
        model(torch.rand(1, 6, 1, 20, 20))
    with pytest.raises(ValueError, match="rank 5"):
        model(torch.rand(8, 1, 20, 20))
    nan = torch.rand(1, 8, 1, 20, 20)
    nan[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(nan)
