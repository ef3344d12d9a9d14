"""One schema for every consumer (sinks/schema.py, published in docs/mqtt.md): ``subscribe``
survives and counts hostile payloads and never prints sender text that drives the terminal.
Issue #21: a float window killed ``das-stream subscribe`` (TypeError), a 400-digit one
(OverflowError); ANSI escapes and BEL reached the terminal, CR/LF forged lines, a 10 MB label
printed as one line, ``window: true`` showed as ``#True``, a window of 1e12 made the summary
count 10**12 windows missing."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import re
from pathlib import Path

import aiomqtt
import jsonschema
import pytest
from sinks_help import prediction, stats

from sinks.console import printable
from sinks.messages import Prediction
from sinks.mqtt import MqttSettings
from sinks.schema import MAX_PAYLOAD_BYTES, PREDICTION, SCHEMAS, STATS, Refused, check
from sinks.subscribe import SubscribeSummary, decode, subscribe

pytestmark = pytest.mark.timeout(60)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"


def with_fields(window_payload: dict, **changes) -> bytes:
    return json.dumps({**window_payload, **changes}).encode()


def hostile() -> list[tuple[str, bytes]]:
    """Each line: (topic, payload); the good ones are windows 0, 2 and 3 and one stats message."""
    p = prediction(0).to_dict()
    return [
        ("das/us1/prediction", prediction(0).to_json()),
        ("das/us1/prediction", with_fields(p, window=1.5)),  # TypeError in GapTracker before
        ("das/us1/prediction", with_fields(p, window=10**400 - 1)),  # OverflowError before
        ("das/us1/prediction", with_fields(p, window=True)),  # "#True" before
        ("das/us1/prediction", with_fields(p, window=-1)),
        ("das/us1/prediction", with_fields(p, window=10**12)),  # "1000000000007 windows missing"
        ("das/us1/prediction", with_fields(p, label="x" * 10_000_000)),  # a 10 MB label
        ("das/us1/prediction", with_fields(p, label="a" * 201)),
        ("das/us1/prediction", with_fields(p, stream="us1/../x")),
        ("das/us1/prediction", with_fields(p, selected=[1, 2.5])),
        ("das/us1/prediction", with_fields(p, probs={"a": 7})),
        ("das/us1/prediction", dataclasses.replace(prediction(2), label="\x1b[2J\x07a\r\nforged").to_json()),
        ("das/us1/stats", with_fields(stats().to_dict(), frames_in=-3)),
        ("das/us1/stats", stats().to_json()),
        ("das/us1/prediction", prediction(3).to_json()),
    ]


async def test_subscribe_survives_counts_and_sanitises_hostile_payloads(mqtt_broker):
    settings = dataclasses.replace(MqttSettings.from_url(mqtt_broker.url, client_id="test-hostile"), reconnect_min=0.05)
    ready, out = asyncio.Event(), io.StringIO()
    task = asyncio.create_task(subscribe(settings, out=out, max_messages=4, ready=ready))
    await ready.wait()
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port, identifier="test-hostile-pub") as client:
        for topic, payload in hostile():
            await client.publish(topic, payload, qos=1)
    summary = await asyncio.wait_for(task, 30)
    assert summary == SubscribeSummary(predictions=3, stats=1, duplicates=0, malformed=11, missing=1)
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text  # nothing drives the terminal
    lines = text.splitlines()
    assert len(lines) == len(hostile()) + 1  # one line per message (+ the gap line): no forged line
    assert max(map(len, lines)) < 400
    assert "#True" not in text and "#1000000000000" not in text
    assert [line for line in lines if line.startswith("gap:")] == [
        "gap: us1 windows 1-1 missing (1; predictions lost or still to come)"
    ]
    forged = next(line for line in lines if "forged" in line)
    assert forged.startswith("us1 #2 ") and "\\x1b[2J\\x07a\\r\\nforged" in forged
    malformed = [line for line in lines if line.startswith("malformed message on das/us1/")]
    assert len(malformed) == 11
    assert "window must be of type integer, got 1.5" in malformed[0]
    assert "window must be <= 2147483647, got 1000000000000" in malformed[4]
    assert "window must be <= 2147483647, got 999999999" in malformed[1] and len(malformed[1]) < 200
    assert "window must be of type integer, got True" in malformed[2]
    assert "window must be >= 0, got -1" in malformed[3]
    assert "over the limit of 262144" in malformed[5]  # the 10 MB label, refused before parsing
    assert "label maxLength is 200, got 201" in malformed[6]


def test_every_message_das_stream_writes_passes_and_records_round_trip():
    p = dataclasses.replace(prediction(5), segment="sub/b.dcm", instance="1.2.826.0.1.3680043.8.498.1")
    assert decode("das/us1/prediction", p.to_json()) == p
    for payload in (prediction(0).to_json(), Prediction(**{**prediction(1).__dict__, "latency_ms": None}).to_json()):
        check("prediction", payload)
    assert decode("das/us1/stats", stats(final=True).to_json()) == stats(final=True)


@pytest.mark.parametrize("kind", ["prediction", "stats"])
def test_the_published_schema_is_the_one_the_code_checks(kind):
    blocks = re.findall(r"```json schema\n(.*?)```", DOCS.read_text(), flags=re.S)
    published = {json.loads(b)["$id"]: json.loads(b) for b in blocks}
    assert published[f"das-stream/{kind}"] == SCHEMAS[kind]
    jsonschema.Draft202012Validator.check_schema(SCHEMAS[kind])  # a valid JSON Schema for others to use


def test_limits():
    assert MAX_PAYLOAD_BYTES == 256 * 1024 and PREDICTION["properties"]["label"]["maxLength"] == 200
    assert STATS["properties"]["frames_in"]["minimum"] == 0
    with pytest.raises(Refused, match="not strict JSON"):
        check("stats", stats().to_json().replace(b"29.97", b"NaN"))
    assert printable("a\x1b[31mb\u202ec\n", 120) == "a\\x1b[31mb\\u202ec\\n"
    assert printable("x" * 500, 10) == "xxxxxxxxxx...(500 chars)"
