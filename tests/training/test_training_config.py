"""Experiment configs: YAML plus overrides, validated, with errors naming the key and the file."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from training.config import config_from_dict, load_config


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: exp\ndata: {kind: medmnist3d, path: x.npz}\ntrain: {lr: 1e-4, epochs: 5}\n")
    config = load_config(
        path, overrides=["model.keep=0.25", "grid.seeds=0,1", "grid.methods=das", "train.progress=false"]
    )
    assert config.train.lr == pytest.approx(1e-4)  # YAML 1.1 reads "1e-4" as text; it still counts as a number
    assert (config.train.epochs, config.model.keep, config.grid.seeds, config.grid.methods) == (
        5,
        0.25,
        (0, 1),
        ("das",),
    )
    assert config.train.progress is False and config.source == str(path)
    assert config_from_dict(config.to_dict()).replace(source=str(path)) == config  # round trip through to_dict
    seeded = config.replace(model={"method": "dps"}, train={"seed": 2})
    assert (seeded.model.method, seeded.train.seed, seeded.train.epochs) == ("dps", 2, 5)


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("data: {kind: medmnist3d, path: x.npz, fsp: 3}", [], "unknown key data.fsp in {path}; known keys in data:"),
        (
            "data: {kind: medmnist3d, path: x.npz}\nmodel: {keep: 1.5}",
            [],
            "model.keep in {path} must be a keep ratio in (0, 1]",
        ),
        (
            "data: {kind: medmnist3d, path: x.npz}",
            ["model.method=best"],
            "model.method (set on the command line) must be one of",
        ),
        ("data: {kind: dicom, path: x}", [], "data.kind in {path} must be one of medmnist3d, videos, synthetic"),
        ("data: {kind: videos, path: x.csv, split: [0.5, 0.5]}", [], "data.split in {path} must be three fractions"),
        ("model: {method: das}", [], "config {path} has no 'data' section"),
        ("data: [1, 2", [], "config file {path} is not valid YAML"),
        (
            "data: {kind: medmnist3d, path: x.npz}",
            ["train.epochs"],
            "override 'train.epochs' must look like section.key=value",
        ),
        (
            "data: {kind: medmnist3d, path: x.npz}",
            ["train.explore_epochs=-1"],
            "train.explore_epochs (set on the command line) must be >= 0",
        ),
    ],
)
def test_bad_configs_name_the_key_and_the_file(tmp_path, text, overrides, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=overrides)
    assert message.format(path=path) in str(info.value)
    assert "\n" not in str(info.value)


def test_every_registered_sampler_has_its_label():
    from sampler.model import METHODS
    from training.report import METHOD_LABELS

    assert list(METHOD_LABELS) == list(METHODS)  # one list of methods, in table order
    assert all(METHOD_LABELS[m] for m in METHODS) and METHOD_LABELS["das"] == "DAS"
