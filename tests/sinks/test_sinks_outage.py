"""The broker stops mid-stream (the sink knows it is down while 20 windows are published) and
comes back on the same port.

Every prediction of the run must reach the subscriber, in order, each once; repeats that QoS 1
may cause after the reconnect must be flagged by ``subscribe`` (and be exact copies).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json

from sinks_help import prediction
from waiting import until

from sinks.mqtt import MqttSettings, MqttSink
from sinks.subscribe import subscribe

WINDOWS = 60
OUTAGE = range(20, 40)  # windows published while the broker is down


async def test_broker_outage_loses_nothing_and_keeps_order(mqtt_broker):
    base = dataclasses.replace(
        MqttSettings.from_url(mqtt_broker.url, drain_timeout=15, reconnect_max=1.0), reconnect_min=0.05
    )
    ready = asyncio.Event()
    out = io.StringIO()
    receiver = asyncio.create_task(
        subscribe(
            dataclasses.replace(base, client_id="test-outage-sub", reconnect_max=0.1),
            out=out,
            raw=True,
            max_messages=WINDOWS,
            ready=ready,
        )
    )
    await ready.wait()

    # Mosquitto keeps the subscriber's session across the restart, so it does not matter who
    # reconnects first. amqtt forgets sessions: let the subscriber resubscribe before the sink is back.
    sink_settings = dataclasses.replace(
        base, client_id="test-outage-sink", reconnect_min=0.05 if mqtt_broker.keeps_sessions else 1.0
    )
    async with MqttSink(sink_settings) as sink:
        await until(lambda: sink.connected, "the sink connected")
        for w in range(WINDOWS):
            if w == OUTAGE.start:
                await asyncio.to_thread(mqtt_broker.stop)
                await until(lambda: not sink.connected, "the sink noticing the outage")
            if w == OUTAGE.stop:
                buffered_during_outage = sink.counters["buffered"]
                await asyncio.to_thread(mqtt_broker.start)
            await sink.publish_prediction(prediction(w))
    summary = await asyncio.wait_for(receiver, 30)

    assert buffered_during_outage >= len(OUTAGE)
    assert sink.counters["published"] == WINDOWS
    assert sink.counters["reconnects"] >= 1
    assert sink.counters["overflow"] == 0 and sink.counters["buffered"] == 0

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    firsts = [m for m in lines if not m.get("duplicate")]
    repeats = [m for m in lines if m.get("duplicate")]
    assert [m["window"] for m in firsts] == list(range(WINDOWS))
    assert firsts == [prediction(w).to_dict() for w in range(WINDOWS)]
    for repeat in repeats:
        original = {k: v for k, v in repeat.items() if k != "duplicate"}
        assert original == prediction(repeat["window"]).to_dict()
    assert summary.predictions == WINDOWS
    assert summary.duplicates == len(repeats)
    assert summary.malformed == 0
