"""The benchmark machinery runs and reports consistent figures (no timing assertions)."""

import json
import socket

import pytest

from streamer.bench import BenchSettings, find_mosquitto, local_broker, make_video, run_bench, to_json


def test_bench_reports_headline_keys_and_consistent_details(tmp_path, mqtt_broker):
    video = make_video(tmp_path / "b.mp4", frames=96, width=80, height=64)
    s = BenchSettings(
        quick=True,
        num_frames=8,
        input_size=32,
        feature_size=16,
        video=str(video),
        mqtt=mqtt_broker.url,
        only=("compute", "throughput", "overlap"),
    )
    result = json.loads(to_json(run_bench(s)))
    for key in ("compute_ratio", "sampler_overhead", "throughput_ratio", "throughput_fps"):
        assert result[key] > 0
    c = result["compute"]
    assert set(c["window_ms"]) == {"das@0.25", "das@0.5", "das@0.75", "full"}
    assert c["ratio_vs_full"]["full"] == 1.0
    assert result["compute_ratio"] == c["ratio_vs_full"]["das@0.5"]
    for name, stages in c["stages_ms"].items():  # the engine's own stages fit in the window's time
        assert set(stages) == {"sampler", "embed", "head"}
        assert 0 < sum(stages.values()) <= c["window_ms"][name] * 1.5  # medians of different calls
    runs = result["throughput"]["runs"]
    assert runs["full"]["frames"] == runs["das@0.5"]["frames"] == 96  # every frame read, none dropped
    assert runs["full"]["dropped"] == 0 and runs["full"]["windows"] == 12
    # full embeds every non-empty frame (the clip has runs of blank frames), DAS about half
    assert runs["full"]["compute_saved"] < 0.3 < runs["das@0.5"]["compute_saved"]
    ov = result["overlap"]
    # stride T/2: each frame is in two windows; the cache embeds each picked frame once
    assert ov["cache"]["frames_embedded_per_frame"] < ov["recompute"]["frames_embedded_per_frame"]
    assert ov["recompute"]["frames_embedded_per_frame"] <= 1.0 + 1e-9


def test_capacity_point_counts_every_stream_and_reports_warm_up():
    """`--streams N` runs one capacity point per variant: N replayed 30 fps streams, all frames
    and windows accounted for (no timing assertion: whether it holds depends on the machine)."""
    s = BenchSettings(
        quick=True,
        num_frames=8,
        input_size=32,
        feature_size=16,
        only=("capacity",),
        streams=3,
        capacity_seconds=3.0,
        engine="torch",
    )
    result = json.loads(to_json(run_bench(s)))
    cap = result["capacity"]
    keys = {
        "das@0.5/fixed_k": "capacity_streams",
        "das@0.5/early_exit": "capacity_streams_early_exit",
        "das@0.5/early_exit_budget": "capacity_streams_early_exit_budget",
        "full/fixed_k": "capacity_streams_full",
    }
    assert set(cap["runs"]) == set(keys)
    for name, key in keys.items():
        run = cap["runs"][name]
        (point,) = run["points"]
        assert point["variant"] == name.split("/")[1]
        assert point["streams"] == 3 and point["frames"] > 3 * 30 * 2  # 3 s at 30 fps each, starts spread over 8 / 30 s
        assert point["windows"] >= point["frames"] // 8 - 3  # every stream's windows closed (T = 8)
        assert result[key] == (3 if point["holds"] else 0)
        model = name.split("/")[0]
        assert run["warm_up_s"] > 0 and result["warm_up_s"][model] == run["warm_up_s"]
        assert 1.0 <= point["frames_per_window"]["mean"] <= (8 if model == "full" else 4)
    # the untrained default model has no exit rule: without a budget its early exit is fixed k
    assert result["exit_rule"].startswith("none")
    assert (
        cap["runs"]["das@0.5/early_exit"]["points"][0]["frames_per_window"]["p50"] == 4.0
    )  # the padded last windows use fewer


def test_the_bench_broker_is_a_throwaway_mosquitto():
    """Without --mqtt the bench publishes to a Mosquitto of its own (the tests' launcher), gone after."""
    if find_mosquitto() is None:
        with local_broker() as url:
            assert url is None  # the bench then runs without MQTT ("mqtt": "none")
        return
    with local_broker() as url:
        host, port = url.removeprefix("mqtt://").split(":")
        with socket.create_connection((host, int(port)), timeout=2):
            pass
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()
    with local_broker("mqtt://10.0.0.1:1883") as given:
        assert given == "mqtt://10.0.0.1:1883"
