"""Where and how to publish: :class:`MqttSettings`, built from a broker URL, and client ids.

``MqttSettings.from_url("mqtts://user:pass@host:8883", topic_prefix="das")`` checks every field
(a bad URL or option is a one-line SinkError naming it and the form); ``settings.client()``
makes the aiomqtt client the sink and ``das-stream subscribe`` connect with.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import aiomqtt

from core.errors import SinkError

log = logging.getLogger(__name__)

URL_FORM = "mqtt://[USER:PASS@]HOST[:PORT] or mqtts://[USER:PASS@]HOST[:PORT]"
_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_TOPIC_RESERVED = str.maketrans({"/": "_", "+": "_", "#": "_"})


def default_client_id(role: str = "") -> str:
    """A client id fixed per host (``das-stream-<host>`` or ``das-stream-<role>-<host>``)."""
    parts = ["das-stream", role, socket.gethostname()]
    return "-".join(p for p in parts if p)


def unique_client_id(role: str = "") -> str:
    """A client id of its own (``das-stream-[<role>-]<host>-<pid>-<random>``), so two programs
    (or two subscriptions in one program) on one host never take each other's session."""
    return f"{default_client_id(role)}-{os.getpid()}-{secrets.token_hex(3)}"


def topic_segment(stream: str) -> str:
    """``stream`` made safe as one topic level ("/", "+" and "#" become "_")."""
    return stream.translate(_TOPIC_RESERVED) or "_"


@dataclass(frozen=True)
class MqttSettings:
    """Where and how to publish; build it with :meth:`from_url`.

    Args:
        host, port: the broker.
        tls: connect with TLS (``mqtts://``).
        username, password: credentials from the URL, or None.
        topic_prefix: first topic level(s), default "das".
        client_id: fixed client id, so the broker keeps the session across reconnects; None
            means ``das-stream-<host>`` for the sink and ``das-stream-sub-<host>`` for subscribe.
        qos: 0, 1 (default) or 2.
        buffer_size: messages that may wait while the broker is slow or away.
        keepalive: MQTT keepalive in seconds.
        tls_ca, tls_cert, tls_key: CA bundle, client certificate and key (PEM files).
        tls_insecure: skip the server host name check (the certificate is still verified).
        timeout: seconds to wait for CONNACK or a PUBACK before giving the connection up.
        reconnect_min, reconnect_max: first and largest pause between connection attempts.
        drain_timeout: on exit, seconds to keep delivering what is still buffered.
        max_inflight: messages sent before their acknowledgements arrive.
        clean_session: ask the broker for a fresh session that ends with the connection
            (default False: a persistent session, queued messages survive a reconnect).
    """

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    topic_prefix: str = "das"
    client_id: str | None = None
    qos: int = 1
    buffer_size: int = 10000
    keepalive: int = 30
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False
    timeout: float = 10.0
    reconnect_min: float = 0.25
    reconnect_max: float = 2.0  # a broker back is found within 2 s (/healthz recovers as fast)
    drain_timeout: float = 5.0
    max_inflight: int = 20
    clean_session: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.qos in (0, 1, 2), f"QoS {self.qos!r} is not 0, 1 or 2"),
            (self.buffer_size >= 1, f"buffer size {self.buffer_size!r} must be at least 1"),
            (self.keepalive >= 1, f"keepalive {self.keepalive!r} must be at least 1 s"),
            (self.max_inflight >= 1, f"max_inflight {self.max_inflight!r} must be at least 1"),
            (self.timeout > 0 and self.drain_timeout >= 0, "timeout must be > 0 and drain_timeout >= 0"),
            (
                0 < self.reconnect_min <= self.reconnect_max,
                f"reconnect backoff {self.reconnect_min!r}..{self.reconnect_max!r} s must satisfy 0 < min <= max",
            ),
            (self.client_id is None or bool(self.client_id), "the MQTT client id must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise SinkError(f"MQTT settings: {message}")
        prefix = self.topic_prefix
        if not prefix or prefix.startswith("/") or prefix.endswith("/") or "+" in prefix or "#" in prefix:
            raise SinkError(
                f"MQTT topic prefix {prefix!r} is not usable; give levels like 'das' or 'site/das' "
                "without '+', '#' or a leading/trailing '/'"
            )
        tls_files = {"CA": self.tls_ca, "certificate": self.tls_cert, "key": self.tls_key}
        if not self.tls and (any(tls_files.values()) or self.tls_insecure):
            raise SinkError(f"TLS options need an mqtts:// broker URL, not mqtt://{self.host}:{self.port}")
        for what, path in tls_files.items():
            if path is not None and not Path(path).is_file():
                raise SinkError(f"TLS {what} file '{path}' does not exist; give the path of a PEM file")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MqttSettings:
        """Parse ``mqtt://[user:pass@]host[:1883]`` or ``mqtts://[user:pass@]host[:8883]``.

        Args:
            url: the broker URL; it sets host, port, tls, username and password.
            **options: any other field (topic_prefix, client_id, qos, buffer_size, tls_ca, ...);
                the rest keep the defaults above (one place for each default).

        Raises:
            SinkError: the URL or an option is malformed (the message names it and the form).
        """
        fixed = sorted(set(options) & {"host", "port", "tls", "username", "password"})
        if fixed:
            raise TypeError(f"from_url: {fixed[0]} comes from the URL, not from a keyword")  # a programming error
        try:
            parts = urlsplit(url.strip())
            hostname = parts.hostname
        except ValueError as exc:  # e.g. "mqtt://[::1": an unclosed IPv6 bracket
            raise SinkError(f"bad MQTT broker URL {_short_url(url)}: {exc}; expected {URL_FORM}") from None
        try:
            port = parts.port
        except ValueError:
            port = -1
        problem = None
        if parts.scheme not in _DEFAULT_PORTS:
            problem = "the scheme must be mqtt or mqtts"
        elif not hostname:
            problem = "no host"
        elif port == -1 or port == 0:
            problem = "the port is not a number in 1-65535"
        elif parts.path not in ("", "/") or parts.query or parts.fragment:
            problem = "unexpected path or query after the host"
        if problem or hostname is None:
            raise SinkError(f"bad MQTT broker URL {_short_url(url)}: {problem or 'no host'}; expected {URL_FORM}")
        return cls(
            host=hostname,
            port=_DEFAULT_PORTS[parts.scheme] if port is None else port,
            tls=parts.scheme == "mqtts",
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            **options,
        )

    @property
    def url(self) -> str:
        """The broker URL without the password (safe to log)."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"

    def topic(self, stream: str, kind: Literal["prediction", "stats"]) -> str:
        """``<prefix>/<stream>/<kind>``."""
        return f"{self.topic_prefix}/{topic_segment(stream)}/{kind}"

    def client(self, *, role: str = "") -> aiomqtt.Client:
        """A new aiomqtt client for these settings (persistent session, MQTT 3.1.1).

        Call it inside a running event loop; enter it with ``async with`` to connect.

        Args:
            role: names the default client id (``das-stream-<role>-<host>``) when
                ``client_id`` is None, so a publisher and a subscriber on one host differ.
        """
        tls_params = None
        if self.tls:
            tls_params = aiomqtt.TLSParameters(ca_certs=self.tls_ca, certfile=self.tls_cert, keyfile=self.tls_key)
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=self.client_id or default_client_id(role),
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=self.clean_session,
            keepalive=self.keepalive,
            timeout=self.timeout,
            tls_params=tls_params,
            tls_insecure=self.tls_insecure if self.tls else None,
            max_inflight_messages=self.max_inflight,
            logger=log,
        )
        client.pending_calls_threshold = self.max_inflight  # aiomqtt warns above this
        return client


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # unparsable: hide everything between "://" and "@"
        head, sep, tail = url.partition("://")
        return f"{head}{sep}***@{tail.rsplit('@', 1)[1]}" if "@" in tail else url
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _short_url(url: str, limit: int = 120) -> str:
    """The redacted URL quoted, cut to ``limit`` characters for one-line errors."""
    text = _redact(url)
    return f"'{text}'" if len(text) <= limit else f"'{text[:limit]}...' ({len(text)} chars)"
