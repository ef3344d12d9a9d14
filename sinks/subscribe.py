"""``das-stream subscribe``: print the predictions and stats arriving on a broker.

QoS 1 delivers at least once, so after a reconnect a prediction may arrive twice. Predictions
are identified by ``(stream, window)``; a repeat with the same payload is flagged and not
counted again. (A restarted stream starts its windows at 0 again with new payloads, so it is
not mistaken for repeats.)

Lost predictions show: a jump in a stream's window numbers (after the first window seen) is
flagged as a gap, and counted as missing until the windows arrive late. Stats lines show the
publisher's delivery counters (``extra.MqttSink``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass, fields
from typing import Any, TextIO

import aiomqtt

from sinks.console import LineWriter, format_prediction, format_stats, printable
from sinks.messages import Prediction, Stats, dumps
from sinks.mqtt import MqttSettings, keep_connected
from sinks.schema import Refused, check

_MAX_TRACKED_GAP = 1000  # windows of one gap remembered for late arrivals
_RECORDS: dict[str, type[Prediction] | type[Stats]] = {"prediction": Prediction, "stats": Stats}


def decode(topic: str, payload: bytes) -> Prediction | Stats:
    """The record a payload on ``<prefix>/<stream>/prediction|stats`` carries, checked against
    the one schema (:mod:`sinks.schema`: types, ranges, sizes). Unknown fields are ignored (newer
    schema versions may add some).

    Raises:
        ValueError: (:class:`sinks.schema.Refused`) not JSON, over the size limit, a required
            field missing, a wrong type or a value out of range.
    """
    kind = topic.rsplit("/", 1)[-1]
    cls = _RECORDS.get(kind)
    if cls is None:
        raise Refused("topic is neither .../prediction nor .../stats")
    data = check(kind, payload)
    known = {f.name for f in fields(cls)}
    values = {k: v for k, v in data.items() if k in known}
    if cls is Prediction:
        values["selected"] = tuple(values["selected"])
    return cls(**values)


class GapTracker:
    """Spots jumps in each stream's window numbers: windows never seen between two seen ones.

    The first window seen of a stream starts its count (the subscriber may have joined late); a
    lower window that was not missing means the stream restarted.
    """

    def __init__(self) -> None:
        self._next: dict[str, int] = {}
        self._missing: dict[str, set[int]] = collections.defaultdict(set)
        self.missing = 0

    def seen(self, p: Prediction) -> tuple[int, int] | None:
        """Record ``p``; return the (first, last) window numbers of a new gap before it, if any."""
        expected = self._next.get(p.stream)
        if expected is not None and p.window < expected:
            if p.window in self._missing[p.stream]:  # arrived late after all
                self._missing[p.stream].discard(p.window)
                self.missing -= 1
                return None
            self._missing.pop(p.stream, None)  # the stream restarted
            expected = None
        self._next[p.stream] = p.window + 1
        if expected is None or p.window == expected:
            return None
        self.missing += p.window - expected
        if p.window - expected <= _MAX_TRACKED_GAP:
            self._missing[p.stream].update(range(expected, p.window))
        return expected, p.window - 1


class RepeatFilter:
    """Spots redelivered predictions by ``(stream, window)`` and payload.

    Args:
        capacity: how many recent predictions to remember.
    """

    def __init__(self, capacity: int = 10000) -> None:
        self._capacity = capacity
        self._seen: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()

    def is_repeat(self, p: Prediction, payload: bytes) -> bool:
        key = (p.stream, p.window)
        digest = hashlib.blake2b(payload, digest_size=16).digest()
        if self._seen.get(key) == digest:
            return True
        self._seen[key] = digest
        self._seen.move_to_end(key)
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return False


@dataclass(frozen=True)
class SubscribeSummary:
    """What ``subscribe`` saw: new predictions, stats, flagged repeats, malformed payloads,
    windows missing between the ones seen."""

    predictions: int
    stats: int
    duplicates: int
    malformed: int
    missing: int = 0


class _Printer:
    """Turns each incoming message into one output line and keeps the tally."""

    def __init__(self, writer: LineWriter, *, raw: bool) -> None:
        self._writer = writer
        self._raw = raw
        self._repeats = RepeatFilter()
        self._gaps = GapTracker()
        self.tally = collections.Counter({"predictions": 0, "stats": 0, "duplicates": 0, "malformed": 0})

    @property
    def accepted(self) -> int:
        return self.tally["predictions"] + self.tally["stats"]

    def summary(self) -> SubscribeSummary:
        return SubscribeSummary(**self.tally, missing=self._gaps.missing)

    async def handle(self, topic: str, payload: bytes) -> None:
        try:
            record = decode(topic, payload)
        except ValueError as exc:
            self.tally["malformed"] += 1
            topic, error = printable(topic, 120), printable(exc, 200)
            await self._writer.write(
                self._line(
                    {"type": "malformed", "topic": topic, "error": error},
                    f"malformed message on {topic}: {error}",
                )
            )
            return
        if isinstance(record, Stats):
            self.tally["stats"] += 1
            await self._writer.write(self._line(json.loads(payload), format_stats(record)))
            return
        if self._repeats.is_repeat(record, payload):
            self.tally["duplicates"] += 1
            await self._writer.write(
                self._line(
                    {**json.loads(payload), "duplicate": True},
                    f"duplicate (already shown): {format_prediction(record)}",
                )
            )
            return
        self.tally["predictions"] += 1
        gap = self._gaps.seen(record)
        if gap is not None:
            first, last = gap
            await self._writer.write(
                self._line(
                    {
                        "type": "gap",
                        "stream": record.stream,
                        "first_window": first,
                        "last_window": last,
                        "missing": last - first + 1,
                    },
                    f"gap: {printable(record.stream, 60)} windows {first}-{last} missing ({last - first + 1}; "
                    "predictions lost or still to come)",
                )
            )
        await self._writer.write(self._line(json.loads(payload), format_prediction(record)))

    def _line(self, obj: dict[str, Any], text: str) -> str:
        return dumps(obj).decode() if self._raw else text


async def subscribe(
    settings: MqttSettings,
    *,
    out: TextIO | None = None,
    duration: float | None = None,
    max_messages: int | None = None,
    raw: bool = False,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    forget_session: bool = False,
) -> SubscribeSummary:
    """Subscribe to ``<prefix>/+/prediction`` and ``<prefix>/+/stats`` and print each arrival.

    Reconnects with backoff (persistent session, client id ``das-stream-sub-<host>`` unless
    ``settings.client_id`` is set), so messages published during a broker outage arrive after it.

    Args:
        settings: broker and topic prefix (``MqttSettings.from_url``).
        out: text stream for the lines (default ``sys.stdout``).
        duration: stop after this many seconds (None: run until cancelled).
        max_messages: stop after this many new predictions and stats (repeats and malformed
            payloads are not counted).
        raw: print each payload as one JSON line instead of a readable line; repeats get
            ``"duplicate": true`` and malformed payloads ``{"type": "malformed", ...}``.
        ready: set once the subscriptions are confirmed the first time.
        stop: when set, stop and return the summary (e.g. on SIGINT/SIGTERM).
        forget_session: on the way out, connect once with a clean session so the broker drops
            the persistent session of ``settings.client_id`` (for a per-process client id).

    Raises:
        SinkError: the broker refused the credentials or its TLS certificate is not trusted.
    """
    writer = LineWriter(out if out is not None else sys.stdout, name="the subscribe output")
    printer = _Printer(writer, raw=raw)
    receive = asyncio.create_task(_receive(settings, printer, max_messages=max_messages, ready=ready))
    stopped = asyncio.create_task(stop.wait() if stop is not None else asyncio.Event().wait())
    try:
        await asyncio.wait({receive, stopped}, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
        if receive.done():
            receive.result()  # a SinkError (credentials, TLS) ends the subscription
    finally:
        for task in (receive, stopped):
            task.cancel()
        await asyncio.gather(receive, stopped, return_exceptions=True)
        await writer.aclose()
        if forget_session and settings.client_id:
            await _forget_session(settings)
    return printer.summary()


async def _forget_session(settings: MqttSettings) -> None:
    """Connect once with a clean session under the same id: the broker then drops the old one."""
    clean = dataclasses.replace(settings, clean_session=True, timeout=2.0)

    async def connect_once() -> None:
        async with clean.client(role="sub"):
            pass

    with contextlib.suppress(Exception):  # best effort: a broker that is away keeps the session
        await asyncio.wait_for(connect_once(), 3)


async def _receive(
    settings: MqttSettings, printer: _Printer, *, max_messages: int | None, ready: asyncio.Event | None
) -> None:
    topics = [(f"{settings.topic_prefix}/+/{kind}", settings.qos) for kind in _RECORDS]

    async def session(client: aiomqtt.Client) -> None:
        await client.subscribe(topics)
        if ready is not None:
            ready.set()
        async for message in client.messages:
            await printer.handle(str(message.topic), bytes(message.payload))
            if max_messages is not None and printer.accepted >= max_messages:
                return

    await keep_connected(settings, session, role="sub", name="subscribe")
