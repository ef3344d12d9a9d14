"""``subscribe`` prints what arrives, flags repeats, tolerates malformed payloads."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json

import aiomqtt
import pytest
from sinks_help import prediction, stats

from sinks.console import format_prediction, format_stats
from sinks.messages import Prediction, Stats
from sinks.mqtt import MqttSettings
from sinks.subscribe import SubscribeSummary, decode, subscribe

RESTARTED = dataclasses.replace(prediction(0), t_first=2000.0, t_last=2000.5)  # same (stream, window), new run


def arrivals() -> list[tuple[str, bytes]]:
    return [
        ("das/us1/prediction", prediction(0).to_json()),
        ("das/us1/prediction", prediction(1).to_json()),
        ("das/us1/prediction", prediction(0).to_json()),  # a QoS 1 redelivery
        ("das/us1/prediction", b"not json"),
        ("das/us1/prediction", b'{"stream": "us1", "window": 9}'),
        ("das/us1/prediction", RESTARTED.to_json()),
        ("das/us1/stats", stats().to_json()),
    ]


async def run_subscribe(broker, *, raw: bool) -> tuple[SubscribeSummary, list[str]]:
    settings = dataclasses.replace(MqttSettings.from_url(broker.url, client_id="test-sub"), reconnect_min=0.05)
    ready = asyncio.Event()
    out = io.StringIO()
    task = asyncio.create_task(subscribe(settings, out=out, raw=raw, max_messages=4, ready=ready))
    await ready.wait()
    async with aiomqtt.Client(broker.host, broker.port, identifier="test-pub") as client:
        for topic, payload in arrivals():
            await client.publish(topic, payload, qos=1)
    summary = await asyncio.wait_for(task, 20)
    return summary, out.getvalue().splitlines()


async def test_readable_lines_with_repeats_flagged_and_malformed_counted(mqtt_broker):
    summary, lines = await run_subscribe(mqtt_broker, raw=False)
    assert lines == [
        format_prediction(prediction(0)),
        format_prediction(prediction(1)),
        "duplicate (already shown): " + format_prediction(prediction(0)),
        "malformed message on das/us1/prediction: not UTF-8 JSON (Expecting value: line 1 column 1 (char 0))",
        "malformed message on das/us1/prediction: missing first_seq, last_seq, t_first, t_last, selected,"
        " probs, label, model, latency_ms",
        format_prediction(RESTARTED),
        format_stats(stats()),
    ]
    assert summary == SubscribeSummary(predictions=3, stats=1, duplicates=1, malformed=2)


async def test_raw_json_lines(mqtt_broker):
    summary, lines = await run_subscribe(mqtt_broker, raw=True)
    rows = [json.loads(line) for line in lines]
    assert rows[0] == prediction(0).to_dict()
    assert rows[1] == prediction(1).to_dict()
    assert rows[2] == {**prediction(0).to_dict(), "duplicate": True}
    assert [(r["type"], r["topic"]) for r in rows[3:5]] == [("malformed", "das/us1/prediction")] * 2
    assert rows[5] == RESTARTED.to_dict()
    assert rows[6] == stats().to_dict()
    assert summary == SubscribeSummary(predictions=3, stats=1, duplicates=1, malformed=2)


async def test_duration_ends_a_quiet_subscription(mqtt_broker):
    settings = MqttSettings.from_url(mqtt_broker.url, client_id="test-sub")
    out = io.StringIO()
    summary = await subscribe(settings, out=out, duration=0.3)
    assert summary == SubscribeSummary(predictions=0, stats=0, duplicates=0, malformed=0)
    assert out.getvalue() == ""


def test_decode_builds_records_and_ignores_unknown_fields():
    p = decode("das/us1/prediction", json.dumps({**prediction(4).to_dict(), "future_field": 1}).encode())
    assert p == prediction(4) and isinstance(p, Prediction)
    s = decode("x/y/us1/stats", stats(final=True).to_json())
    assert s == stats(final=True) and isinstance(s, Stats)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("das/us1/prediction", b"[1, 2]", "the message must be of type object, got a list"),
        ("das/us1/prediction", b'{"stream": "\xff"}', "not UTF-8 JSON"),
        (
            "das/us1/prediction",
            json.dumps({**prediction(0).to_dict(), "probs": [0.5]}).encode(),
            "probs must be of type object",
        ),
        ("das/us1/stats", json.dumps({**stats().to_dict(), "fps_in": "fast"}).encode(), "fps_in must be of type"),
        ("das/us1/stats", b'{"stream": "us1"}', "missing frames_in"),
        ("das/us1/other", prediction(0).to_json(), "neither"),
    ],
)
def test_decode_rejects_malformed_payloads(topic, payload, reason):
    with pytest.raises(ValueError, match=reason):
        decode(topic, payload)
