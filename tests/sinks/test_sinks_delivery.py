"""Delivery figures that tell the truth: strict JSON payloads, URL errors that name the
problem, a sender that survives an unsendable message, lost predictions that show up at exit
and in ``subscribe`` (gaps in window numbers, a summary on SIGINT/SIGTERM)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import math
import os
import signal
import socket
import sys

import pytest
from sinks_help import Collector, prediction, stats

from core.errors import SinkError
from sinks.console import format_stats
from sinks.mqtt import MqttSettings, MqttSink, unique_client_id
from sinks.subscribe import GapTracker, decode, subscribe

pytestmark = pytest.mark.timeout(60)


def strict_loads(data: bytes):
    """json.loads that refuses NaN and Infinity, as every other JSON parser does."""

    def refuse(name):
        raise ValueError(f"{name} in the payload")

    return json.loads(data, parse_constant=refuse)


def test_payloads_are_strict_json_even_with_non_finite_numbers():
    p = dataclasses.replace(prediction(0), latency_ms=-math.inf, probs={"a": math.nan, "b": 1.0})
    data = strict_loads(p.to_json())
    assert data["latency_ms"] is None and data["probs"] == {"a": None, "b": 1.0}
    s = dataclasses.replace(stats(), latency_ms={"p50": math.nan, "p95": 1.0, "p99": math.inf}, fps_in=math.inf)
    data = strict_loads(s.to_json())
    assert data["latency_ms"] == {"p50": None, "p95": 1.0, "p99": None} and data["fps_in"] is None
    assert strict_loads(prediction(3).to_json()) == prediction(3).to_dict()  # finite: unchanged


def test_subscribe_refuses_non_strict_json():
    payload = prediction(0).to_json().replace(b'"latency_ms":12.5', b'"latency_ms":NaN')
    with pytest.raises(ValueError, match="not strict JSON"):
        decode("das/us1/prediction", payload)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mqtt://127.0.0.1:0", "port is not a number in 1-65535"),
        ("mqtt://[::1", "Invalid IPv6 URL"),
        ("mqtts://bob:secret@[::1:8883", "Invalid IPv6 URL"),
        ("mqtt://" + "h" * 5000 + ":70000", "chars"),
    ],
)
def test_bad_urls_are_one_line_errors(url, reason):
    with pytest.raises(SinkError, match=reason) as exc:
        MqttSettings.from_url(url)
    assert "secret" not in str(exc.value) and len(str(exc.value)) < 400


def test_unique_client_ids_differ_per_call_and_name_the_process():
    ids = {unique_client_id("sub") for _ in range(20)}
    assert len(ids) == 20 and all(f"-sub-{socket.gethostname()}-{os.getpid()}-" in i for i in ids)


async def test_an_unsendable_message_is_dropped_counted_and_the_rest_delivered(mqtt_broker, caplog):
    settings = MqttSettings.from_url(mqtt_broker.url, client_id="test-poison", drain_timeout=10)
    poison = dataclasses.replace(prediction(1), stream="bad\ud800")  # a topic that cannot be encoded
    async with Collector(mqtt_broker.host, mqtt_broker.port, "das/+/prediction") as collector:
        async with MqttSink(settings) as sink:
            for p in (prediction(0), poison, prediction(2), prediction(3)):
                await sink.publish_prediction(p)
        received = await collector.wait_for(3)
    assert [m["window"] for _, m in received] == [0, 2, 3]
    assert sink.sender_failures == 1
    assert sink.predictions == {"accepted": 4, "published": 3, "overflow": 0, "refused": 0, "failed": 1}
    assert any("could not be sent and is dropped" in r.getMessage() for r in caplog.records)
    error = sink.delivery_error()
    assert str(error).startswith(
        f"1 of 4 predictions never reached the MQTT broker {mqtt_broker.url} "
        "(0 dropped when the buffer of 10000 was full, 0 still waiting at exit, "
        "1 that could not be sent)"
    )


async def test_a_broker_never_reached_is_a_delivery_error(caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = dataclasses.replace(
        MqttSettings.from_url(f"mqtt://127.0.0.1:{port}", client_id="test-nobody", drain_timeout=0.3, buffer_size=2),
        reconnect_min=0.05,
    )
    caplog.set_level(logging.WARNING, logger="sinks.mqtt")
    async with MqttSink(settings) as sink:
        for w in range(5):
            await sink.publish_prediction(prediction(w))
        await sink.publish_stats(stats())
        assert sink.counters["overflow"] == 4 and sink.counters["buffered"] == 2
    error = sink.delivery_error()
    assert str(error).startswith(
        f"5 of 5 predictions never reached the MQTT broker mqtt://127.0.0.1:{port} "
        "(4 dropped when the buffer of 2 was full, 1 still waiting at exit)"
    )
    overflow_lines = [r for r in caplog.records if "buffer of 2 full" in r.getMessage()]
    assert len(overflow_lines) == 1  # rate-limited: one warning for the burst


def test_gap_tracker_flags_jumps_late_arrivals_and_restarts():
    tracker = GapTracker()
    seen = [tracker.seen(prediction(w)) for w in (5, 6, 9, 7, 10, 8, 0, 1)]
    assert seen == [None, None, (7, 8), None, None, None, None, None]
    assert tracker.missing == 0  # 7 and 8 came late; 0 after 10 is a restart, not a gap
    assert tracker.seen(prediction(4)) == (2, 3) and tracker.missing == 2


async def test_subscribe_shows_gaps_and_delivery_counters(mqtt_broker):
    settings = dataclasses.replace(MqttSettings.from_url(mqtt_broker.url, client_id="test-gaps"), reconnect_min=0.05)
    ready, out = asyncio.Event(), io.StringIO()
    task = asyncio.create_task(subscribe(settings, out=out, max_messages=4, ready=ready))
    await ready.wait()
    delivered = dataclasses.replace(
        stats(),
        extra={"MqttSink": {"published": 7, "buffered": 0, "overflow": 3, "refused": 0, "failed": 0, "reconnects": 1}},
    )
    async with MqttSink(MqttSettings.from_url(mqtt_broker.url, client_id="test-gaps-pub")) as sink:
        for w in (0, 1, 4):
            await sink.publish_prediction(prediction(w))
        await sink.publish_stats(delivered)
    summary = await asyncio.wait_for(task, 20)
    lines = out.getvalue().splitlines()
    assert lines[2] == "gap: us1 windows 2-3 missing (2; predictions lost or still to come)"
    assert lines[-1] == format_stats(delivered)
    assert lines[-1].endswith("| mqtt published 7 waiting 0 lost 3 reconnects 1")
    assert summary.missing == 2 and summary.predictions == 3


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_subscribe_command_prints_its_summary_on_a_signal(mqtt_broker, sig):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "das_stream.cli",
        "subscribe",
        "--mqtt",
        mqtt_broker.url,
        "--raw",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with MqttSink(MqttSettings.from_url(mqtt_broker.url, client_id="test-sig-pub")) as sink:
        reading = asyncio.ensure_future(proc.stdout.readline())
        for w in range(1000):  # until the subscriber, once it is up (it imports torch), has printed one
            await sink.publish_prediction(prediction(w))
            done, _ = await asyncio.wait({reading}, timeout=0.25)
            if done:
                break
        assert reading.done() and reading.result()
    proc.send_signal(sig)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    assert "das-stream subscribe:" in err.decode() and "predictions" in err.decode()
