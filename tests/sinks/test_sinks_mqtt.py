"""MqttSink against a real broker: topics, schema, order, counters, buffering while away."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging

from sinks_help import PREDICTION_FIELDS, STATS_FIELDS, Collector, prediction, stats

from sinks.mqtt import MqttSettings, MqttSink
from sinks.subscribe import subscribe


def settings_for(broker, **changes) -> MqttSettings:
    base = MqttSettings.from_url(broker.url, client_id="test-sink", drain_timeout=10)
    return dataclasses.replace(base, **{"reconnect_min": 0.05, "reconnect_max": 1.0, **changes})


async def test_predictions_and_stats_arrive_on_their_topics_in_order(mqtt_broker):
    async with Collector(mqtt_broker.host, mqtt_broker.port, "das/#") as collector:
        async with MqttSink(settings_for(mqtt_broker)) as sink:
            for w in range(30):
                await sink.publish_prediction(prediction(w))
            await sink.publish_stats(stats(windows=30, final=True))
            await sink.publish_prediction(prediction(0, stream="us2"))
        received = await collector.wait_for(32)

    us1 = [(topic, msg) for topic, msg in received if msg["stream"] == "us1"]
    assert [topic for topic, _ in us1] == ["das/us1/prediction"] * 30 + ["das/us1/stats"]
    assert [msg["window"] for _, msg in us1[:30]] == list(range(30))
    for _, msg in us1[:30]:
        assert PREDICTION_FIELDS <= msg.keys() and msg["type"] == "prediction"
    assert us1[3][1] == prediction(3).to_dict()
    final = us1[30][1]
    assert STATS_FIELDS <= final.keys() and final["type"] == "stats" and final["final"] is True
    assert set(final["latency_ms"]) == {"p50", "p95", "p99"}
    assert [(t, m["window"]) for t, m in received if m["stream"] == "us2"] == [("das/us2/prediction", 0)]
    assert sink.counters == {"published": 32, "buffered": 0, "overflow": 0, "refused": 0, "failed": 0, "reconnects": 0}


async def test_topic_prefix_and_unsafe_stream_names(mqtt_broker):
    async with Collector(mqtt_broker.host, mqtt_broker.port, "site/a/#") as collector:
        async with MqttSink(settings_for(mqtt_broker, topic_prefix="site/a")) as sink:
            await sink.publish_prediction(prediction(0, stream="probe/1+#"))
        [(topic, msg)] = await collector.wait_for(1)
    assert topic == "site/a/probe_1__/prediction"
    assert msg["stream"] == "probe/1+#"


async def test_publish_returns_while_broker_is_away_and_overflow_drops_oldest(mqtt_broker):
    """Broker down before the sink starts: 12 publishes into a 5-message buffer keep the
    newest 5 (7 overflow); once the broker is back exactly those 5 are delivered, in order."""
    ready = asyncio.Event()
    sub_settings = settings_for(mqtt_broker, client_id="test-sub", reconnect_max=0.1)
    out = io.StringIO()
    receiver = asyncio.create_task(subscribe(sub_settings, out=out, raw=True, max_messages=5, ready=ready))
    await ready.wait()
    await asyncio.to_thread(mqtt_broker.stop)

    # Without a persistent session on the broker, the subscriber needs a head start after the
    # restart: give the sink a longer first backoff than the subscriber's.
    backoff = 0.05 if mqtt_broker.keeps_sessions else 1.0
    async with MqttSink(settings_for(mqtt_broker, buffer_size=5, reconnect_min=backoff)) as sink:
        for w in range(12):
            await sink.publish_prediction(prediction(w))
        assert sink.counters["buffered"] == 5
        assert sink.counters["overflow"] == 7
        assert sink.counters["published"] == 0
        await asyncio.to_thread(mqtt_broker.start)
    summary = await asyncio.wait_for(receiver, 30)

    messages = [json.loads(line) for line in out.getvalue().splitlines()]
    windows = [m["window"] for m in messages if not m.get("duplicate")]
    assert windows == [7, 8, 9, 10, 11]
    assert summary.predictions == 5
    assert sink.counters == {"published": 5, "buffered": 0, "overflow": 7, "refused": 0, "failed": 0, "reconnects": 0}


async def test_undelivered_messages_are_counted_and_reported_at_exit(mqtt_broker, caplog):
    await asyncio.to_thread(mqtt_broker.stop)
    caplog.set_level(logging.WARNING, logger="sinks.mqtt")
    async with MqttSink(settings_for(mqtt_broker, drain_timeout=0.2)) as sink:
        for w in range(4):
            await sink.publish_prediction(prediction(w))
        await sink.publish_stats(stats())
    assert sink.counters["buffered"] == 5  # after exit: what was left
    assert sink.counters["published"] == 0
    assert any(
        "5 message(s) not delivered" in r.getMessage() and mqtt_broker.url in r.getMessage() for r in caplog.records
    )
