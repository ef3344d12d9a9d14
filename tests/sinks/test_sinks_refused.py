"""A message the broker refuses (larger than Mosquitto's ``max_packet_size``: the broker closes
the connection, MQTT 3.1.1 says no more) is found out, dropped, counted and logged once, and the
messages after it go on. Issue #21: one refused stats message blocked every later prediction,
with a reconnect every 0.25 s."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from brokers import MosquittoOptions
from sinks_help import Collector, prediction, stats

from sinks.mqtt import MqttSettings, MqttSink
from sinks.mqtt.sink import packet_size

pytestmark = pytest.mark.timeout(60)


def big_stats(windows: int):
    """Stats of about 600 bytes, as the real ones are (predictions are about 250 here)."""
    return dataclasses.replace(stats(windows=windows), extra={"reconnects": 0, "note": "x" * 300})


async def test_messages_the_broker_refuses_are_dropped_counted_and_the_rest_go_on(mqtt_broker_factory, caplog):
    broker = mqtt_broker_factory(options=MosquittoOptions(max_packet_size=500))
    settings = MqttSettings.from_url(broker.url, client_id="refused-test", reconnect_min=0.05)
    assert packet_size("das/us1/prediction", prediction(99).to_json(), 1) < 500
    assert packet_size("das/us1/stats", big_stats(9).to_json(), 1) > 500
    caplog.set_level(logging.INFO, logger="sinks.mqtt")
    async with Collector(broker.host, broker.port, "das/#") as collector:
        async with MqttSink(settings) as sink:
            for window in range(40):
                await sink.publish_prediction(prediction(window))
                if window % 5 == 4:
                    await sink.publish_stats(big_stats(window))
            received = await collector.wait_for(40)
        counters = sink.counters
    windows = [payload["window"] for topic, payload in received if topic.endswith("/prediction")]
    assert sorted(set(windows)) == list(range(40))  # every prediction arrived
    assert not [t for t, _ in received if t.endswith("/stats")]
    assert counters["refused"] == 8 and counters["published"] == 40 and counters["buffered"] == 0
    # the counters partition what was accepted (issue #20: "buffered" and "undelivered" were one expression)
    assert set(counters) == {"published", "buffered", "overflow", "refused", "failed", "reconnects"}
    assert sum(counters[k] for k in ("published", "buffered", "overflow", "refused", "failed")) == 48
    assert counters["reconnects"] <= 3  # learning the limit once, not a reconnect per message
    assert sink.refused_from is not None and 400 < sink.refused_from <= packet_size(
        "das/us1/stats", big_stats(9).to_json(), 1
    )
    refused_logs = [r for r in caplog.records if "refuses messages that large" in r.getMessage()]
    assert len(refused_logs) == 1
    assert sink.delivery_error() is None  # every prediction was delivered
