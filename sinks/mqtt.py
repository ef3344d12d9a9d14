"""Publish predictions and stats to an MQTT broker, surviving broker outages.

Topics are ``<prefix>/<stream>/prediction`` and ``<prefix>/<stream>/stats``; payloads are the
JSON of :class:`sinks.messages.Prediction` and :class:`sinks.messages.Stats` (see docs/mqtt.md).

Delivery: ``publish_*`` only appends to a bounded FIFO buffer and returns. One background task
connects (MQTT 3.1.1, fixed client id, clean_session=False), sends the buffer in order and drops
a message from it only once the broker acknowledged it (PUBACK for QoS 1). When the connection
breaks, unacknowledged messages go back to the front of the buffer and are sent again after a
reconnect with exponential backoff, so a QoS 1 message may reach a subscriber twice; consumers
dedupe predictions on ``(stream, window)``. When the buffer is full the oldest waiting message
is dropped, counted as overflow and logged (rate-limited). Every connection is logged. An
unexpected failure of the sender is logged, counted (``sender_failures``) and the sender
restarts; after ``_MAX_SENDER_FAILURES`` failures in a row without a delivery the sink fails
(SinkError from the next publish and from exit).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from core.errors import SinkError
from sinks.messages import Prediction, Stats

log = logging.getLogger(__name__)
T = TypeVar("T")

URL_FORM = "mqtt://[USER:PASS@]HOST[:PORT] or mqtts://[USER:PASS@]HOST[:PORT]"
_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_TOPIC_RESERVED = str.maketrans({"/": "_", "+": "_", "#": "_"})
# CONNACK refusals worth retrying; any other refusal (credentials, client id, ACL) is final.
_RETRYABLE_REFUSALS = {"Server unavailable", "Server busy"}
_OVERFLOW_LOG_INTERVAL = 10.0  # seconds between overflow warnings
_MAX_SENDER_FAILURES = 5  # unexpected sender failures in a row (no delivery between) before giving up


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
        if problem:
            raise SinkError(f"bad MQTT broker URL {_short_url(url)}: {problem}; expected {URL_FORM}")
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


def _fatal_error(exc: aiomqtt.MqttError, settings: MqttSettings) -> SinkError | None:
    """A SinkError when ``exc`` means retrying cannot help (credentials, TLS trust), else None."""
    if isinstance(exc, MqttConnectError) and str(exc.rc) not in _RETRYABLE_REFUSALS:
        return SinkError(
            f"MQTT broker {settings.url} refused the connection ({exc.rc}); "
            "check the user name and password in --mqtt and the client id"
        )
    if isinstance(exc.__context__, ssl.SSLCertVerificationError):
        return SinkError(
            f"TLS certificate of MQTT broker {settings.url} not trusted ({exc.__context__.verify_message}); "
            "give the CA certificate that signed it as the TLS CA file"
        )
    return None


async def keep_connected(
    settings: MqttSettings,
    session: Callable[[aiomqtt.Client], Awaitable[T]],
    *,
    role: str = "",
    name: str = "mqtt",
) -> T:
    """Run ``session`` on a connected client, reconnecting with exponential backoff.

    Whenever the connection fails or ``session`` raises ``MqttError``, wait (``reconnect_min``,
    doubling up to ``reconnect_max``), connect again and call ``session`` again.

    Args:
        settings: the broker.
        session: the work to do while connected; its return value is returned.
        role: picks the default client id (see :meth:`MqttSettings.client`).
        name: who is connecting, for the log.

    Raises:
        SinkError: the broker refused the credentials or its certificate is not trusted.
    """
    delay = settings.reconnect_min
    while True:
        try:
            async with settings.client(role=role) as client:
                delay = settings.reconnect_min
                log.info("%s: connected to %s", name, settings.url)
                return await session(client)
        except aiomqtt.MqttError as exc:
            fatal = _fatal_error(exc, settings)
            if fatal is not None:
                raise fatal from None
            log.log(
                logging.WARNING if delay == settings.reconnect_min else logging.DEBUG,
                "%s: broker %s unavailable (%s); retrying in %.2f s",
                name,
                settings.url,
                exc,
                delay,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, settings.reconnect_max)


@dataclass(frozen=True, eq=False)
class _Outgoing:
    topic: str
    payload: bytes
    prediction: bool = False


class MqttSink:
    """Publish predictions and stats to MQTT without ever blocking the caller on the network.

    Use as ``async with MqttSink(settings) as sink: await sink.publish_prediction(p)``.

    Args:
        settings: broker, topics, QoS, buffer and reconnect settings.

    Attributes:
        counters: "published" (acknowledged), "buffered" (waiting or in flight now),
            "overflow" (dropped because the buffer was full), "reconnects" (connections after
            the first), "undelivered" (accepted, kept, and not acknowledged yet: what is
            buffered now; after exit, what was left). ``overflow + undelivered`` is everything
            accepted that has not reached the broker.
        predictions: the same for predictions alone: "accepted", "published", "overflow", and
            "failed" (messages the client could not send, see ``sender_failures``).
        sender_failures: unexpected sender errors, each followed by a restart.
    """

    def __init__(self, settings: MqttSettings) -> None:
        self.settings = settings
        self._waiting: collections.deque[_Outgoing] = collections.deque()
        self._inflight: list[_Outgoing] = []
        self._wake = asyncio.Event()  # new message, or a publish finished
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._open = False
        self._fatal: SinkError | None = None
        self._connections = 0
        self._published = 0
        self._overflow = 0
        self._predictions = {"accepted": 0, "published": 0, "overflow": 0, "failed": 0}
        self._sender_failures = 0
        self._overflow_logged_at = -math.inf
        self._overflow_logged = 0
        self._connected = False

    @property
    def connected(self) -> bool:
        """True while a connection to the broker is up (False before the first one and during outages)."""
        return self._connected

    @property
    def counters(self) -> dict[str, int]:
        return {
            "published": self._published,
            "buffered": len(self._waiting) + len(self._inflight),
            "overflow": self._overflow,
            "reconnects": max(0, self._connections - 1),
            "undelivered": len(self._waiting) + len(self._inflight),
        }

    @property
    def predictions(self) -> dict[str, int]:
        return dict(self._predictions)

    @property
    def sender_failures(self) -> int:
        return self._sender_failures

    @property
    def undelivered_predictions(self) -> int:
        """Predictions accepted but not acknowledged by the broker (lost, once the sink has closed)."""
        return self._predictions["accepted"] - self._predictions["published"]

    def delivery_error(self) -> SinkError | None:
        """After exit: a one-line SinkError when predictions were accepted but never delivered."""
        lost = self.undelivered_predictions
        if not lost or self._open:
            return None
        total, overflow, failed = (self._predictions[k] for k in ("accepted", "overflow", "failed"))
        unsent = f", {failed} that could not be sent" if failed else ""
        return SinkError(
            f"{lost} of {total} predictions never reached the MQTT broker {self.settings.url} "
            f"({overflow} dropped when the buffer of {self.settings.buffer_size} was full, "
            f"{lost - overflow - failed} still waiting at exit{unsent}); check that the broker is reachable, "
            "or raise --mqtt-buffer"
        )

    async def __aenter__(self) -> MqttSink:
        if self._task is not None:
            raise RuntimeError("MqttSink is not reusable")
        self._task = asyncio.create_task(self._run(), name=f"mqtt-sink {self.settings.url}")
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Deliver what is buffered within ``drain_timeout``, then disconnect and report the rest."""
        assert self._task is not None
        self._open = False
        idle = asyncio.create_task(self._idle.wait())
        await asyncio.wait({idle, self._task}, timeout=self.settings.drain_timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in (idle, self._task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = len(self._waiting) + len(self._inflight)
        if left or self._overflow:
            log.warning(
                "mqtt sink: %d message(s) not delivered to %s (%d still buffered after the %.1f s drain, "
                "%d dropped on overflow)",
                left + self._overflow,
                self.settings.url,
                left,
                self.settings.drain_timeout,
                self._overflow,
            )
        if self._fatal is not None and exc_type is None:
            raise self._fatal

    async def publish_prediction(self, p: Prediction) -> None:
        """Queue ``p`` for ``<prefix>/<stream>/prediction``; returns at once."""
        self._enqueue(_Outgoing(self.settings.topic(p.stream, "prediction"), p.to_json(), prediction=True))

    async def publish_stats(self, s: Stats) -> None:
        """Queue ``s`` for ``<prefix>/<stream>/stats``; returns at once."""
        self._enqueue(_Outgoing(self.settings.topic(s.stream, "stats"), s.to_json()))

    def _enqueue(self, message: _Outgoing) -> None:
        if self._fatal is not None:
            raise self._fatal
        if not self._open:
            raise RuntimeError("MqttSink is not open; use 'async with MqttSink(...)'")
        self._predictions["accepted"] += message.prediction
        if len(self._waiting) >= self.settings.buffer_size:
            self._drop(self._waiting.popleft())
        self._waiting.append(message)
        self._idle.clear()
        self._wake.set()

    def _drop(self, message: _Outgoing) -> None:
        """Count (and now and then log) a message dropped because the buffer is full."""
        self._overflow += 1
        self._predictions["overflow"] += message.prediction
        now = time.monotonic()
        if now - self._overflow_logged_at >= _OVERFLOW_LOG_INTERVAL:
            log.warning(
                "mqtt sink: buffer of %d full (broker %s away or slow); %d message(s) dropped so far "
                "(%d predictions), %d since the last warning",
                self.settings.buffer_size,
                self.settings.url,
                self._overflow,
                self._predictions["overflow"],
                self._overflow - self._overflow_logged,
            )
            self._overflow_logged_at, self._overflow_logged = now, self._overflow

    async def _run(self) -> None:
        failures = 0
        while True:
            published = self._published
            try:
                await keep_connected(self.settings, self._deliver, name="mqtt sink")
                return
            except SinkError as exc:
                log.error("%s", exc)
                self._fatal = exc
                return
            except Exception as exc:  # noqa: BLE001 - any sender failure must surface, never silently
                self._sender_failures += 1
                failures = 1 if self._published > published else failures + 1
                log.error(
                    "mqtt sink: sender failed (%s: %s); restart %d of %d",
                    type(exc).__name__,
                    str(exc)[:200],
                    failures,
                    _MAX_SENDER_FAILURES,
                )
                if failures >= _MAX_SENDER_FAILURES:
                    self._fatal = SinkError(
                        f"MQTT sender for {self.settings.url} failed {failures} times in a row "
                        f"({type(exc).__name__}: {str(exc)[:120]}); predictions cannot be delivered"
                    )
                    log.error("%s", self._fatal)
                    return
                await asyncio.sleep(self.settings.reconnect_min)

    async def _deliver(self, client: aiomqtt.Client) -> None:
        """Send until the connection breaks; raises MqttError then, with unacked messages requeued."""
        self._connections += 1
        self._connected = True
        if self._connections > 1:
            log.info(
                "mqtt sink: reconnected to %s, %d message(s) buffered, %d dropped on overflow so far",
                self.settings.url,
                self.counters["buffered"],
                self._overflow,
            )
        watch = asyncio.create_task(self._watch(client))
        send = asyncio.create_task(self._send_forever(client))
        try:
            done, _ = await asyncio.wait({watch, send}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._connected = False
            for task in (watch, send):
                task.cancel()
            await asyncio.gather(watch, send, return_exceptions=True)
            self._requeue_inflight()
        for task in done:
            task.result()

    def _requeue_inflight(self) -> None:
        """Put unacknowledged messages back in front, in order; keep the buffer's bound."""
        self._waiting.extendleft(reversed(self._inflight))
        self._inflight = []
        while len(self._waiting) > self.settings.buffer_size:
            self._drop(self._waiting.popleft())

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        """Return only by raising MqttError when the client disconnects (aiomqtt's public signal)."""
        async for _ in client.messages:
            pass

    async def _send_forever(self, client: aiomqtt.Client) -> None:
        """Keep up to ``max_inflight`` publishes going, in buffer order; raise MqttError if one fails."""
        sending: set[asyncio.Task[None]] = set()
        try:
            while True:
                for task in [t for t in sending if t.done()]:
                    sending.discard(task)
                    task.result()
                while self._waiting and len(sending) < self.settings.max_inflight:
                    message = self._waiting.popleft()
                    self._inflight.append(message)
                    task = asyncio.create_task(self._send_one(client, message))
                    task.add_done_callback(lambda _: self._wake.set())
                    sending.add(task)
                if not sending:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
        finally:
            for task in sending:
                task.cancel()
            await asyncio.gather(*sending, return_exceptions=True)

    async def _send_one(self, client: aiomqtt.Client, message: _Outgoing) -> None:
        """Publish and wait for the acknowledgement; then the message leaves the buffer.

        A failure that is not the connection's (MqttError) is the message's own: it is dropped,
        counted in ``sender_failures``, logged, and the sender goes on with the next one."""
        try:
            await client.publish(message.topic, message.payload, qos=self.settings.qos, timeout=self.settings.timeout)
        except aiomqtt.MqttError:
            raise
        except Exception as exc:  # noqa: BLE001 - one unsendable message must not stop the others
            self._inflight.remove(message)
            self._sender_failures += 1
            self._predictions["failed"] += message.prediction
            log.error(
                "mqtt sink: a message to %s could not be sent and is dropped (%s: %s); %d so far",
                message.topic[:120],
                type(exc).__name__,
                str(exc)[:200],
                self._sender_failures,
            )
            return
        self._inflight.remove(message)
        self._published += 1
        self._predictions["published"] += message.prediction


__all__ = [
    "MqttSettings",
    "MqttSink",
    "URL_FORM",
    "default_client_id",
    "keep_connected",
    "topic_segment",
    "unique_client_id",
]
