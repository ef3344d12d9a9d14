import typing

import pytest

from core.errors import ConfigError
from streamer.config import RunConfig

CONFIGS = ["configs/replay_video.yaml", "configs/probe_udp.yaml", "configs/zmq_feed.yaml"]


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_validate(path):
    cfg = RunConfig.load(path)
    assert cfg.sources and all(":" in s for s in cfg.sources)


def test_flags_override_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("sources: [synthetic:]\nstride: 4\nqos: 0\n")
    cfg = RunConfig.load(f, {"stride": 8, "qos": None, "sources": ["video:x.mp4"]})
    assert cfg.stride == 8 and cfg.qos == 0 and cfg.sources == ("video:x.mp4",)


@pytest.mark.parametrize(
    "text,needle",
    [
        ("strid: 4\n", "unknown key 'strid'"),
        ("stride: 0\n", "stride must be an integer from 1 to 4096"),
        ("max_batch_windows: 99999999999999999999\n", "max_batch_windows must be an integer from 1 to 1024"),
        ("threads: 99999999999999999999\n", "threads must be an integer from 1 to 1024"),
        ("duration: .inf\n", "duration must be a number > 0 and at most 31536000 (s), got inf"),
        ("speed: .nan\n", "speed must be a number > 0"),
        ("gap: -1\n", "gap must be a number from 0 to"),
        ("stride: four\n", "stride must be an integer"),
        ("overload: drop_newest\n", "overload must be one of 'auto', "),
        ("engine: tensorrt\n", "engine must be one of 'auto', 'torch', 'torch-cudagraph', 'onnx'"),
        ("pacing: 3\n", "pacing must be true or false"),
        ("sources: []\n", "no source given"),
        ("- a\n- b\n", "must hold a mapping"),
        ("stride: [\n", "is not valid YAML"),
        ("device: gpu\n", "device must be one of auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_config_one_line_error_names_key_and_file(tmp_path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        RunConfig.load(f)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg
    if "mapping" not in needle and "YAML" not in needle:
        assert str(f) in msg


def test_run_and_training_configs_read_values_by_the_same_rules(tmp_path):
    from training.config import config_from_dict

    f = tmp_path / "c.yaml"
    f.write_text("stats_interval: 5e-1\ndevice: cuda:1\n")  # YAML 1.1 reads 5e-1 as text
    cfg = RunConfig.load(f)
    assert cfg.stats_interval == 0.5 and cfg.device == "cuda:1"
    exp = config_from_dict({"data": {"kind": "synthetic"}, "train": {"lr": "5e-1", "device": "cuda:1"}})
    assert exp.train.lr == 0.5 and exp.train.device == "cuda:1"


def test_a_binary_config_file_is_a_one_line_error(tmp_path):
    f = tmp_path / "model.pt"
    f.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match=r"model.pt is not a text \(UTF-8\) YAML file") as err:
        RunConfig.load(f)
    assert "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.load(tmp_path / "nope.yaml")


def test_closed_choices_come_from_their_registries():
    from core.settings import choices_of
    from streamer.inference import BACKENDS
    from streamer.pipeline import Policy

    assert choices_of(RunConfig, "engine") == BACKENDS
    assert choices_of(RunConfig, "overload") == ("auto", *typing.get_args(Policy))
    assert choices_of(RunConfig, "stride") == ()


@pytest.mark.parametrize("text", ["duration: .inf\n", "max_batch_windows: 99999999999999999999\n", "threads: 0\n"])
def test_the_cluster_config_checks_the_same_bounds(tmp_path, text):
    # issue #21: `duration: .inf` was accepted by the cluster's YAML where the run's refused it
    from streamer.cluster.config import ClusterConfig

    f = tmp_path / "ward.yaml"
    f.write_text('sources: ["synthetic:"]\n' + text)
    with pytest.raises(ConfigError, match=rf"{text.split(':')[0]} must be .* \(in {f}\)"):
        ClusterConfig.load(f)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--max-batch-windows", "99999999999999999999"], "max_batch_windows must be an integer from 1 to 1024"),
        (["run", "--threads", "99999999999999999999"], "threads must be an integer from 1 to 1024"),
        (
            ["bench", "--threads", "99999999999999999999"],
            "argument --threads: '99999999999999999999' is not an integer",
        ),
    ],
)
def test_huge_numbers_on_the_command_line_are_one_line_errors(capsys, argv, message):
    # issue #21: --max-batch-windows 1e20 never finished start-up; --threads 1e20 ended in a traceback
    import signal

    from das_stream.cli import main

    handler = signal.getsignal(signal.SIGINT)  # `run` installs its start-up handler
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    finally:
        signal.signal(signal.SIGINT, handler)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and "Traceback" not in "\n".join(err)
