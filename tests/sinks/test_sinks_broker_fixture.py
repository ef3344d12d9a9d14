"""The shared mqtt_broker fixture: a real broker that stops and comes back on the same port."""

from __future__ import annotations

import socket

from brokers import find_mosquitto


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_broker_restarts_on_the_same_port(mqtt_broker, request):
    wanted = request.config.getoption("--mqtt-broker")
    expected = wanted if wanted != "auto" else ("mosquitto" if find_mosquitto() else "amqtt")
    assert mqtt_broker.kind == expected
    assert mqtt_broker.keeps_sessions == (expected == "mosquitto")
    port = mqtt_broker.port
    assert mqtt_broker.url == f"mqtt://127.0.0.1:{port}" and mqtt_broker.host == "127.0.0.1"
    assert accepts(port)
    mqtt_broker.stop()
    assert not accepts(port)
    mqtt_broker.start()
    assert mqtt_broker.port == port and accepts(port)
