"""MqttSettings: broker URLs, options and topics (no broker needed)."""

from __future__ import annotations

import dataclasses
import re
import socket

import pytest

from core.errors import SinkError
from sinks.mqtt import URL_FORM, MqttSettings, default_client_id


def test_plain_url_defaults():
    s = MqttSettings.from_url("mqtt://broker.local")
    assert (s.host, s.port, s.tls, s.username, s.password) == ("broker.local", 1883, False, None, None)
    assert (s.topic_prefix, s.qos, s.buffer_size) == ("das", 1, 10000)
    assert s.client_id is None
    assert s.topic("us1", "prediction") == "das/us1/prediction"
    assert s.topic("us1", "stats") == "das/us1/stats"


def test_mqtts_url_with_credentials_and_options(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed until connect")
    s = MqttSettings.from_url(
        "mqtts://bob:p%40ss%3Aword@10.0.0.5",
        topic_prefix="ward/3",
        client_id="cart-7",
        qos=0,
        buffer_size=50,
        keepalive=15,
        tls_ca=str(ca),
        tls_insecure=True,
    )
    assert (s.host, s.port, s.tls) == ("10.0.0.5", 8883, True)
    assert (s.username, s.password) == ("bob", "p@ss:word")
    assert (s.topic_prefix, s.client_id, s.qos, s.buffer_size, s.keepalive) == ("ward/3", "cart-7", 0, 50, 15)
    assert (s.tls_ca, s.tls_insecure) == (str(ca), True)
    assert s.topic("us1", "stats") == "ward/3/us1/stats"
    assert "p@ss" not in repr(s) and "p@ss" not in s.url
    assert s.url == "mqtts://bob@10.0.0.5:8883"


def test_explicit_port_and_ipv6():
    assert MqttSettings.from_url("mqtt://127.0.0.1:1999/").port == 1999
    s = MqttSettings.from_url("mqtts://[::1]:9000")
    assert (s.host, s.port, s.url) == ("::1", 9000, "mqtts://[::1]:9000")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://broker:1883", "scheme"),
        ("broker:1883", "scheme"),
        ("mqtt://", "no host"),
        ("mqtt://:1883", "no host"),
        ("mqtt://broker:notaport", "port"),
        ("mqtt://broker:70000", "port"),
        ("mqtt://broker:1883/topic", "path"),
        ("mqtt://broker?x=1", "path"),
    ],
)
def test_bad_url_names_the_url_and_the_expected_form(url, reason):
    with pytest.raises(SinkError) as caught:
        MqttSettings.from_url(url)
    message = str(caught.value)
    assert url in message and reason in message and URL_FORM in message
    assert "\n" not in message


def test_bad_url_hides_the_password():
    with pytest.raises(SinkError) as caught:
        MqttSettings.from_url("mqtt://bob:hunter2@broker:1883/x")
    assert "hunter2" not in str(caught.value) and "bob:***@broker" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"qos": 3}, "QoS 3"),
        ({"buffer_size": 0}, "buffer size 0"),
        ({"keepalive": 0}, "keepalive 0"),
        ({"topic_prefix": "das/#"}, "topic prefix 'das/#'"),
        ({"topic_prefix": "/das"}, "topic prefix '/das'"),
        ({"topic_prefix": ""}, "topic prefix ''"),
        ({"client_id": ""}, "client id"),
        ({"tls_insecure": True}, "mqtts://"),
    ],
)
def test_bad_options_are_sink_errors(options, names):
    with pytest.raises(SinkError, match=re.escape(names)):
        MqttSettings.from_url("mqtt://broker", **options)


def test_tls_files_must_exist_and_need_mqtts(tmp_path):
    missing = tmp_path / "nope.pem"
    with pytest.raises(SinkError, match=f"TLS CA file '{missing}' does not exist"):
        MqttSettings.from_url("mqtts://broker", tls_ca=str(missing))
    with pytest.raises(SinkError, match="need an mqtts:// broker URL"):
        MqttSettings.from_url("mqtt://broker", tls_cert=str(missing))


def test_replace_validates_too():
    s = MqttSettings.from_url("mqtt://broker")
    with pytest.raises(SinkError, match="reconnect backoff"):
        dataclasses.replace(s, reconnect_min=5.0, reconnect_max=1.0)


def test_stream_names_become_one_topic_level():
    s = MqttSettings.from_url("mqtt://broker")
    assert s.topic("cart/3+#", "prediction") == "das/cart_3__/prediction"
    assert s.topic("", "stats") == "das/_/stats"


def test_default_client_ids_are_fixed_per_host_and_role():
    host = socket.gethostname()
    assert default_client_id() == f"das-stream-{host}"
    assert default_client_id("sub") == f"das-stream-sub-{host}"
