"""MQTT output: settings and URL parsing (:mod:`.settings`), the connection loop shared with
``das-stream subscribe`` (:mod:`.connection`), and the sink (:mod:`.sink`). See docs/mqtt.md."""

from .connection import keep_connected
from .settings import URL_FORM, MqttSettings, default_client_id, topic_segment, unique_client_id
from .sink import MqttSink

__all__ = [
    "URL_FORM",
    "MqttSettings",
    "MqttSink",
    "default_client_id",
    "keep_connected",
    "topic_segment",
    "unique_client_id",
]
