"""The whole runtime as users run it: `das-stream run` in its own process, a real broker, a
separate MQTT subscriber, real video files encoded with PyAV."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys

import numpy as np
import pytest
from streamer_help import make_model_file, write_video
from waiting import until, until_sync

from sinks.mqtt import MqttSettings
from sinks.subscribe import subscribe
from sources.frame import Frame
from streamer.window import Windower

T, S = 8, 4


def expected_windows(n: int) -> int:
    w = Windower(stream="s", num_frames=T, stride=S)
    img = np.zeros((1, 1), np.uint8)
    count = sum(w.push(Frame("s", i, 0.0, img)) is not None for i in range(n))
    last = w.flush()
    return count + (1 if last is not None and last.frames else 0)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return make_model_file(tmp_path_factory.mktemp("model") / "tiny.pt", num_frames=T, k=4)


def run_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "das_stream.cli", "run", "--log-level", "warning", *args]


class Collector:
    """A separate subscriber (persistent session, reconnects) recording every JSON message."""

    def __init__(self, url: str, prefix: str) -> None:
        self.settings = MqttSettings.from_url(
            url, topic_prefix=prefix, client_id=f"test-sub-{prefix}", reconnect_max=0.5
        )
        self.out = io.StringIO()
        self.ready = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def __aenter__(self):
        self.task = asyncio.create_task(subscribe(self.settings, out=self.out, raw=True, ready=self.ready))
        await asyncio.wait_for(self.ready.wait(), 10)
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def messages(self) -> list[dict]:
        return [json.loads(line) for line in self.out.getvalue().splitlines() if line.strip()]

    def predictions(self) -> list[dict]:
        return [m for m in self.messages() if m.get("type") == "prediction" and not m.get("duplicate")]

    def final_stats(self) -> list[dict]:
        return [m for m in self.messages() if m.get("type") == "stats" and m.get("final")]

    async def wait_final(self, streams: int = 1) -> None:
        await until(lambda: len(self.final_stats()) >= streams, f"final stats of {streams} stream(s)")


def assert_accounting(stats: dict) -> None:
    assert stats["frames_pending"] == 0
    assert stats["frames_in"] == stats["frames_forwarded"] + stats["frames_skipped"] + stats["frames_dropped"]


async def test_replay_every_window_arrives_and_stats_add_up(tmp_path, mqtt_broker, model_file):
    n = 103  # not a multiple of the stride: the last partial window is classified, padded
    video = write_video(tmp_path / "clip.mp4", frames=n)
    async with Collector(mqtt_broker.url, "e2e") as sub:
        proc = await asyncio.create_subprocess_exec(
            *run_cmd(
                "--source",
                f"video:{video}",
                "--model",
                str(model_file),
                "--stride",
                str(S),
                "--no-pacing",
                "--mqtt",
                mqtt_broker.url,
                "--topic-prefix",
                "e2e",
                "--quiet",
                "--client-id",
                "e2e-runner",
            ),
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        await sub.wait_final()
    preds = sub.predictions()
    assert [p["window"] for p in preds] == list(range(expected_windows(n)))
    assert all(p["stream"] == "clip" and len(p["selected"]) <= 4 for p in preds)
    assert preds[-1]["last_seq"] == n - 1 and preds[-1]["padded"] > 0
    assert all(abs(sum(p["probs"].values()) - 1) < 1e-3 and p["label"] in p["probs"] for p in preds)
    (final,) = sub.final_stats()
    assert final["frames_in"] == n and final["frames_dropped"] == 0 and final["windows"] == len(preds)
    assert_accounting(final)
    forwarded = {s for p in preds for s in p["selected"]}
    assert final["frames_forwarded"] == len(forwarded)
    assert 0 < final["compute_saved"] < 1


async def test_sigint_flushes_and_publishes_final_stats(tmp_path, mqtt_broker, model_file):
    jsonl = tmp_path / "out.jsonl"
    async with Collector(mqtt_broker.url, "sig") as sub:
        proc = await asyncio.create_subprocess_exec(
            *run_cmd(
                "--source",
                "synthetic:?fps=60",
                "--model",
                str(model_file),
                "--mqtt",
                mqtt_broker.url,
                "--topic-prefix",
                "sig",
                "--jsonl",
                str(jsonl),
                "--client-id",
                "sig-runner",
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

        await until(lambda: len(sub.predictions()) >= 3, "3 predictions")
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        await sub.wait_final()
    (final,) = sub.final_stats()
    assert_accounting(final)
    assert final["windows"] == len(sub.predictions())
    assert b"synthetic" in out  # the console sink printed lines too
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sum(m["type"] == "prediction" for m in lines) == final["windows"]
    assert lines[-1]["type"] == "stats" and lines[-1]["final"]


async def test_broker_outage_mid_stream_loses_nothing(tmp_path, mqtt_broker, model_file):
    n = 240  # 8 s at 30 fps, with the broker away while 8 windows are published
    video = write_video(tmp_path / "long.mp4", frames=n)
    jsonl = tmp_path / "out.jsonl"
    async with Collector(mqtt_broker.url, "out") as sub:
        proc = await asyncio.create_subprocess_exec(
            *run_cmd(
                "--source",
                f"video:{video}",
                "--model",
                str(model_file),
                "--mqtt",
                mqtt_broker.url,
                "--topic-prefix",
                "out",
                "--quiet",
                "--client-id",
                "outage-runner",
                "--jsonl",
                str(jsonl),
            ),
            stderr=asyncio.subprocess.PIPE,
        )
        await until(lambda: len(sub.predictions()) >= 5, "5 predictions")
        await asyncio.to_thread(mqtt_broker.stop)
        at_stop = len(predictions_in(jsonl))
        await until(lambda: len(predictions_in(jsonl)) >= at_stop + 8, "8 windows published into the outage")
        await asyncio.to_thread(mqtt_broker.start)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        await sub.wait_final()
    windows = [p["window"] for p in sub.predictions()]
    assert windows == list(range(expected_windows_stride(n, T)))  # all, in order, no repeats
    (final,) = sub.final_stats()
    assert_accounting(final)


def predictions_in(jsonl) -> list[str]:
    """The prediction lines of the run's JSON-lines copy (every message also goes there)."""
    lines = jsonl.read_text().splitlines() if jsonl.exists() else []
    return [x for x in lines if '"type":"prediction"' in x]


def expected_windows_stride(n: int, stride: int) -> int:
    return -(-n // stride)  # non-overlapping windows, the last one padded


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_video_one_line_error_nonzero_exit(tmp_path, model_file, damage):
    import subprocess

    video = write_video(tmp_path / "ok.mp4", frames=60)
    data = video.read_bytes()
    bad = tmp_path / f"{damage}.mp4"
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    res = subprocess.run(
        run_cmd("--source", f"video:{bad}", "--model", str(model_file), "--no-pacing", "--quiet"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("das-stream: error:") and bad.name in last


def test_wrong_model_file_is_a_clear_error(tmp_path):
    import subprocess

    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a model")
    res = subprocess.run(run_cmd("--model", str(bad), "--duration", "1"), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]  # one line
    assert "das-stream: error: model file" in res.stderr and str(bad) in res.stderr


def test_zmq_feed_bad_messages_counted_good_frames_flow(tmp_path, model_file):
    """A real sender process pushes good frames interleaved with every kind of malformed message."""
    import socket
    import subprocess
    from pathlib import Path

    peer_dir = Path(__file__).parents[1] / "sources"
    sys.path.insert(0, str(peer_dir))
    from zmq_peer import mixed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    jsonl = tmp_path / "zmq.jsonl"
    run = subprocess.Popen(
        run_cmd(
            "--source",
            f"zmq+pull://127.0.0.1:{port}?bind=1",
            "--model",
            str(model_file),
            "--jsonl",
            str(jsonl),
            "--quiet",
            "--stats-interval",
            "0.5",
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def latest():
            lines = jsonl.read_text().splitlines() if jsonl.exists() else []
            stats = [json.loads(x) for x in lines if '"type":"stats"' in x]
            return stats[-1] if stats else None

        # the first periodic stats: the source is bound and listening
        until_sync(lambda: latest() is not None or run.poll() is not None, "the first stats")
        assert run.poll() is None, run.stderr.read()
        peer = subprocess.run(
            [sys.executable, str(peer_dir / "zmq_peer.py"), f"tcp://127.0.0.1:{port}", "push", "connect", "mixed"],
            timeout=60,
            capture_output=True,
            text=True,
        )
        assert peer.returncode == 0, peer.stderr
        scenario = mixed()
        good = sum(v is not None for _, v in scenario)
        until_sync(lambda: latest()["frames_in"] >= good, f"{good} good frames in")
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 0, err
    final = [json.loads(x) for x in jsonl.read_text().splitlines() if '"final":true' in x][-1]
    assert final["frames_in"] == good
    assert final["bad_messages"] == len(scenario) - good
    assert_accounting(final)


async def test_subscribe_command_prints_what_arrives(mqtt_broker):
    from sinks.messages import Prediction
    from sinks.mqtt import MqttSink

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "das_stream.cli",
        "subscribe",
        "--mqtt",
        mqtt_broker.url,
        "--topic-prefix",
        "cli",
        "--raw",
        "--count",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    settings = MqttSettings.from_url(mqtt_broker.url, topic_prefix="cli", client_id="cli-pub")
    async with MqttSink(settings) as sink:
        window = 0
        while proc.returncode is None and window < 400:  # until the subscriber has seen 3 and left
            await sink.publish_prediction(
                Prediction(
                    stream="us1",
                    window=window,
                    first_seq=0,
                    last_seq=7,
                    t_first=0.0,
                    t_last=0.1,
                    selected=(1, 5),
                    probs={"a": 0.25, "b": 0.75},
                    label="b",
                    model="m (das)",
                    latency_ms=1.0,
                )
            )
            window += 1
            try:
                await asyncio.wait_for(proc.wait(), 0.25)
            except TimeoutError:
                pass
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    got = [json.loads(line) for line in out.decode().splitlines()]
    assert len(got) == 3 and all(m["type"] == "prediction" and m["label"] == "b" for m in got)
    assert [m["window"] for m in got] == sorted(m["window"] for m in got)
    assert "3 predictions" in err.decode()


async def test_no_arguments_runs_the_demo_until_stopped():
    """`das-stream` alone: the synthetic source through the bundled demo model, to the console."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "das_stream.cli", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    lines = []

    async def first_predictions():
        while len([x for x in lines if " seq " in x]) < 2:
            line = await proc.stdout.readline()
            assert line, "das-stream ended before printing predictions"
            lines.append(line.decode())

    await asyncio.wait_for(first_predictions(), 90)
    proc.send_signal(signal.SIGINT)
    rest, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines += rest.decode().splitlines()
    assert lines[0].startswith("synthetic #0 seq 0-15: ")  # demo windows: T = 16
    assert any(label in lines[0] for label in ("a_lines", "b_lines", "consolidation"))
    assert "stats (final)" in lines[-1] and "dropped 0" in lines[-1]
