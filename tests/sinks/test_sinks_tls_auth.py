"""TLS (self-signed certificate made by openssl) and user:pass (mosquitto_passwd) against Mosquitto."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import subprocess

import pytest
from brokers import MosquittoOptions
from sinks_help import prediction

from core.errors import SinkError
from sinks.mqtt import MqttSettings, MqttSink
from sinks.subscribe import subscribe


def fast(settings: MqttSettings, client_id: str) -> MqttSettings:
    return dataclasses.replace(settings, client_id=client_id, reconnect_min=0.05, reconnect_max=0.1)


async def roundtrip(settings: MqttSettings, windows: int = 3) -> list[int]:
    """Publish ``windows`` predictions with a sink; return the windows a subscriber got."""
    ready = asyncio.Event()
    out = io.StringIO()
    receiver = asyncio.create_task(
        subscribe(fast(settings, "test-sub"), out=out, raw=True, max_messages=windows, ready=ready)
    )
    await ready.wait()
    async with MqttSink(fast(settings, "test-sink")) as sink:
        for w in range(windows):
            await sink.publish_prediction(prediction(w))
    await asyncio.wait_for(receiver, 20)
    assert sink.counters["published"] == windows
    return [json.loads(line)["window"] for line in out.getvalue().splitlines()]


@pytest.fixture
def tls_broker(mqtt_broker_factory, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return mqtt_broker_factory(MosquittoOptions(certfile=cert, keyfile=key)), cert


@pytest.fixture
def password_broker(mqtt_broker_factory, tmp_path):
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "alice", "s3cret:/@"], check=True)
    return mqtt_broker_factory(MosquittoOptions(password_file=passwords))


async def test_tls_with_the_brokers_ca_delivers(tls_broker):
    broker, cert = tls_broker
    assert broker.url.startswith("mqtts://")
    settings = MqttSettings.from_url(broker.url, tls_ca=str(cert))
    assert settings.tls and settings.port == broker.port
    assert await roundtrip(settings) == [0, 1, 2]


async def test_tls_with_an_untrusted_certificate_is_a_sink_error(tls_broker):
    broker, _ = tls_broker
    settings = fast(MqttSettings.from_url(broker.url), "test-sink")  # system CAs do not know it
    with pytest.raises(SinkError, match="not trusted"):
        async with MqttSink(settings) as sink:
            await sink.publish_prediction(prediction(0))
    with pytest.raises(SinkError, match="not trusted"):
        await subscribe(fast(settings, "test-sub"), out=io.StringIO())


async def test_user_and_password_from_the_url(password_broker):
    # The password holds ':', '/' and '@', percent-encoded in the URL.
    url = f"mqtt://alice:s3cret%3A%2F%40@{password_broker.host}:{password_broker.port}"
    assert await roundtrip(MqttSettings.from_url(url)) == [0, 1, 2]


async def test_wrong_password_is_a_sink_error_without_the_password(password_broker):
    url = f"mqtt://alice:wrong-pw@{password_broker.host}:{password_broker.port}"
    settings = fast(MqttSettings.from_url(url), "test-sink")
    with pytest.raises(SinkError, match="refused the connection") as caught:
        async with MqttSink(settings) as sink:
            await sink.publish_prediction(prediction(0))
    assert "wrong-pw" not in str(caught.value)
    assert "alice@" in str(caught.value)
    with pytest.raises(SinkError, match="refused the connection"):
        await subscribe(fast(settings, "test-sub"), out=io.StringIO())
