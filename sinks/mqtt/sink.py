"""Publish predictions and stats to an MQTT broker, surviving broker outages.

Topics are ``<prefix>/<stream>/prediction`` and ``<prefix>/<stream>/stats``; payloads are the
JSON of :class:`sinks.messages.Prediction` and :class:`sinks.messages.Stats` (see docs/mqtt.md).

Delivery: ``publish_*`` only appends to a bounded FIFO buffer and returns. One background task
connects (MQTT 3.1.1, fixed client id, clean_session=False), sends the buffer in order and drops
a message from it only once the broker acknowledged it (PUBACK for QoS 1). When the connection
breaks, unacknowledged messages go back to the front of the buffer and are sent again after a
reconnect with exponential backoff, so a QoS 1 message may reach a subscriber twice; consumers
dedupe predictions on ``(stream, window)``. When the buffer is full the oldest waiting message
is dropped, counted as overflow and logged (rate-limited). A message the broker refuses (larger
than Mosquitto's ``max_packet_size``: the broker closes the connection, MQTT 3.1.1 gives no
reason) is found out, dropped, counted as refused and logged once; larger messages are then
dropped without being sent, so one refused message never blocks the others. Every connection
is logged. An
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
import time
from dataclasses import dataclass
from types import TracebackType

import aiomqtt

from core.errors import SinkError
from sinks.messages import Prediction, Stats

from .connection import keep_connected
from .settings import MqttSettings

log = logging.getLogger(__name__)

_OVERFLOW_LOG_INTERVAL = 10.0  # seconds between overflow warnings
_MAX_SENDER_FAILURES = 5  # unexpected sender failures in a row (no delivery between) before giving up
_REFUSED_AFTER = 2  # connections a message broke while alone in flight before it counts as refused


def packet_size(topic: str, payload: bytes, qos: int) -> int:
    """Bytes of the MQTT PUBLISH packet for ``payload`` on ``topic`` (what a broker's
    ``max_packet_size`` limits): fixed header, topic, packet id (QoS > 0), payload."""
    remaining = 2 + len(topic.encode(errors="replace")) + (2 if qos else 0) + len(payload)
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 else 4
    return 1 + length_bytes + remaining


@dataclass(eq=False)
class _Outgoing:
    topic: str
    payload: bytes
    size: int  # of its PUBLISH packet
    prediction: bool = False
    strikes: int = 0  # connections that broke while it was alone in flight


class MqttSink:
    """Publish predictions and stats to MQTT without ever blocking the caller on the network.

    Use as ``async with MqttSink(settings) as sink: await sink.publish_prediction(p)``.

    Args:
        settings: broker, topics, QoS, buffer and reconnect settings.

    Attributes:
        counters: what became of every message accepted, each counted once: "published"
            (acknowledged), "buffered" (waiting or in flight now; after exit, what was left),
            "overflow" (dropped because the buffer was full), "refused" (dropped because the
            broker refuses messages that large), "failed" (the client could not send it); so
            ``published + buffered + overflow + refused + failed`` is every message accepted.
            Also "reconnects" (connections after the first).
        predictions: the same for predictions alone, with "accepted".
        sender_failures: unexpected sender errors, each followed by a restart.
        refused_from: the smallest packet size (bytes) the broker refused, or None.
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
        self._refused = 0
        self._failed = 0
        self._predictions = {"accepted": 0, "published": 0, "overflow": 0, "refused": 0, "failed": 0}
        self._sender_failures = 0
        self.refused_from: int | None = None
        self._largest_acked = 0
        self._careful = False  # a connection broke with messages in flight: new record sizes go alone
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
            "refused": self._refused,
            "failed": self._failed,
            "reconnects": max(0, self._connections - 1),
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
        total, overflow, refused, failed = (self._predictions[k] for k in ("accepted", "overflow", "refused", "failed"))
        unsent = f", {failed} that could not be sent" if failed else ""
        too_big = f", {refused} refused by the broker as too large" if refused else ""
        return SinkError(
            f"{lost} of {total} predictions never reached the MQTT broker {self.settings.url} "
            f"({overflow} dropped when the buffer of {self.settings.buffer_size} was full, "
            f"{lost - overflow - failed - refused} still waiting at exit{unsent}{too_big}); check that the broker "
            "is reachable and accepts messages this large, or raise --mqtt-buffer"
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
        self._enqueue(self._outgoing(self.settings.topic(p.stream, "prediction"), p.to_json(), prediction=True))

    async def publish_stats(self, s: Stats) -> None:
        """Queue ``s`` for ``<prefix>/<stream>/stats``; returns at once."""
        self._enqueue(self._outgoing(self.settings.topic(s.stream, "stats"), s.to_json()))

    def _outgoing(self, topic: str, payload: bytes, *, prediction: bool = False) -> _Outgoing:
        return _Outgoing(topic, payload, packet_size(topic, payload, self.settings.qos), prediction)

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
            self._suspect_inflight()
            self._requeue_inflight()
        for task in done:
            task.result()

    def _suspect_inflight(self) -> None:
        """The connection broke. From the first such break with messages in flight on, a message
        larger than any acknowledged goes alone (nothing else in flight); if the connection breaks
        while it is alone, it may be what the broker refuses, and after ``_REFUSED_AFTER`` such
        breaks it is dropped and its size remembered."""
        if self._careful and len(self._inflight) == 1 and self._inflight[0].size > self._largest_acked:
            message = self._inflight[0]
            message.strikes += 1
            if message.strikes >= _REFUSED_AFTER:
                self._inflight.clear()
                self.refused_from = min(message.size, self.refused_from or message.size)
                log.warning(
                    "mqtt sink: broker %s closed the connection %d times while a message of %d bytes to %s was "
                    "alone in flight: it refuses messages that large (Mosquitto's max_packet_size?); dropped, and "
                    "messages of %d bytes or more will be dropped without sending (counted as refused)",
                    self.settings.url,
                    message.strikes,
                    message.size,
                    message.topic[:120],
                    self.refused_from,
                )
                self._refuse(message)
        self._careful = self._careful or bool(self._inflight)

    def _refuse(self, message: _Outgoing) -> None:
        self._refused += 1
        self._predictions["refused"] += message.prediction

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
                while self._waiting and len(sending) < self.settings.max_inflight and not self._alone_inflight():
                    message = self._waiting[0]
                    if self.refused_from is not None and message.size >= self.refused_from:
                        self._refuse(self._waiting.popleft())  # the broker would close the connection again
                        continue
                    if self._careful and message.size > self._largest_acked and sending:
                        break  # a size never acknowledged goes alone: wait for the others
                    self._waiting.popleft()
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

    def _alone_inflight(self) -> bool:
        """Whether a message of a size never acknowledged is in flight (then nothing else is sent)."""
        return self._careful and any(m.size > self._largest_acked for m in self._inflight)

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
            self._failed += 1
            self._predictions["failed"] += message.prediction
            log.error(
                "mqtt sink: a message to %s could not be sent and is dropped (%s: %s); %d so far",
                message.topic[:120].encode("utf-8", "backslashreplace").decode(),  # a log must stay valid UTF-8
                type(exc).__name__,
                str(exc)[:200],
                self._sender_failures,
            )
            return
        self._inflight.remove(message)
        self._published += 1
        self._predictions["published"] += message.prediction
        self._largest_acked = max(self._largest_acked, message.size)
