"""`das-stream run` as users run it, when predictions cannot all be delivered or the user
interrupts it early: a broker outage longer than the MQTT buffer, Ctrl-C during start-up, bad
flags caught before the model loads."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from streamer_help import make_model_file
from waiting import until_sync

pytestmark = pytest.mark.timeout(120)


def run_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "das_stream.cli", "run", *args]


def lines_of(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_outage_longer_than_the_buffer_is_logged_counted_and_fails_the_run(mqtt_broker, tmp_path):
    model = make_model_file(tmp_path / "tiny.pt", num_frames=8, k=4)
    jsonl = tmp_path / "out.jsonl"
    mqtt_broker.stop()  # away from the start: the first connection is late
    run = subprocess.Popen(
        run_cmd(
            "--source",
            "synthetic:?fps=100&frames=400&size=32",
            "--model",
            str(model),
            "--mqtt",
            mqtt_broker.url,
            "--mqtt-buffer",
            "3",
            "--jsonl",
            str(jsonl),
            "--quiet",
            "--stats-interval",
            "0.5",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        until_sync(  # well past the buffer
            lambda: sum(m["type"] == "prediction" for m in lines_of(jsonl)) >= 20 or run.poll() is not None,
            "20 predictions",
        )
        assert run.poll() is None, run.stderr.read()
        mqtt_broker.start()
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    messages = lines_of(jsonl)
    predictions = [m for m in messages if m["type"] == "prediction"]
    stats = [m for m in messages if m["type"] == "stats"]
    final = stats[-1]
    assert final["final"] and final["windows"] == len(predictions) == 50
    delivery = final["extra"]["MqttSink"]
    accepted = len(predictions) + len(stats) - 1  # everything handed to the sink before the final stats
    assert delivery["published"] + delivery["overflow"] + delivery["buffered"] == accepted
    assert delivery["overflow"] >= 17

    assert run.returncode == 1, err
    assert "buffer of 3 full" in err  # the overflow is logged ...
    assert err.count("buffer of 3 full") < 10  # ... rate-limited
    assert "mqtt sink: connected to" in err  # the late first connection is logged
    [line] = [x for x in err.splitlines() if x.startswith("das-stream: error:")]
    lost = int(line.split()[2])
    assert line.startswith(
        f"das-stream: error: {lost} of 50 predictions never reached the MQTT broker {mqtt_broker.url}"
    )
    assert 17 <= lost < 50  # the outage lost some; the ones after it arrived


def test_ctrl_c_during_start_up_exits_130_without_a_traceback(tmp_path):
    # -X importtime reports each import on stderr as it completes: the first of das-stream's own
    # packages below the CLI is imported inside main(), where start-up (imports, the model, the
    # engine's warm-up: seconds) begins. The signal goes then, not after a guessed delay.
    cmd = [sys.executable, "-X", "importtime", *run_cmd("--quiet")[1:]]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in run.stderr:
        seen.append(line)
        if line.rsplit("|", 1)[-1].strip().split(".")[0] in ("core", "streamer", "sampler", "sources", "sinks"):
            break
    run.send_signal(signal.SIGINT)
    rest, err = run.communicate(timeout=60)
    err = "".join(seen) + err
    assert run.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_a_non_finite_duration_is_refused_by_the_command_line():
    res = subprocess.run(run_cmd("--duration", "nan"), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "argument --duration: 'nan' is not a finite number of seconds > 0" in res.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mqtt://127.0.0.1:0", "bad MQTT broker URL 'mqtt://127.0.0.1:0': the port"),
        ("mqtt://[::1", "bad MQTT broker URL 'mqtt://[::1': Invalid IPv6 URL"),
    ],
)
def test_the_broker_url_is_checked_before_the_model_loads(url, message, tmp_path):
    from core.errors import SinkError
    from streamer.app import build_pipeline
    from streamer.config import RunConfig

    missing_model = tmp_path / "never-loaded.pt"  # loading it first would be a ModelFileError
    with pytest.raises(SinkError) as exc:
        build_pipeline(RunConfig(model=str(missing_model), mqtt=url))
    assert message in str(exc.value)


def test_a_text_file_is_not_a_model_file(tmp_path):
    from core.errors import ModelFileError
    from sampler.model import SampledClassifier

    text, noise = tmp_path / "notes.pt", tmp_path / "noise.pt"
    text.write_text("hello\n")
    noise.write_bytes(bytes(range(7, 256)) * 20)
    for path in (text, noise):
        with pytest.raises(ModelFileError, match=f"model file {path} is not a das-stream model file"):
            SampledClassifier.load(path)
