"""Records and a plain aiomqtt subscriber shared by the sink tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiomqtt

from sinks.messages import Prediction, Stats

# The fields the issue requires in every payload.
PREDICTION_FIELDS = {
    "stream",
    "window",
    "first_seq",
    "last_seq",
    "t_first",
    "t_last",
    "selected",
    "probs",
    "label",
    "model",
    "latency_ms",
}
STATS_FIELDS = {
    "frames_in",
    "frames_forwarded",
    "frames_skipped",
    "frames_dropped",
    "bad_messages",
    "windows",
    "fps_in",
    "latency_ms",
    "compute_saved",
}


def prediction(window: int, *, stream: str = "us1", t: int = 16) -> Prediction:
    """Window ``window`` of a stride-``t`` stream; the label alternates with the window."""
    first = window * t
    label = "b_lines" if window % 2 else "a_lines"
    other = "a_lines" if window % 2 else "b_lines"
    return Prediction(
        stream=stream,
        window=window,
        first_seq=first,
        last_seq=first + t - 1,
        t_first=1000.0 + first / 30,
        t_last=1000.0 + (first + t - 1) / 30,
        selected=(first + 1, first + 5, first + 9, first + 14),
        probs={label: 0.75, other: 0.25},
        label=label,
        model="demo (das)",
        latency_ms=12.5 + window,
    )


def stats(*, stream: str = "us1", windows: int = 3, final: bool = False) -> Stats:
    return Stats(
        stream=stream,
        frames_in=windows * 16,
        frames_forwarded=windows * 4,
        frames_skipped=windows * 12,
        frames_dropped=0,
        frames_pending=0,
        bad_messages=1,
        windows=windows,
        fps_in=29.97,
        latency_ms={"p50": 20.0, "p95": 31.5, "p99": 40.25},
        compute_saved=0.75,
        final=final,
        extra={"reconnects": 0},
    )


class Collector:
    """A separate aiomqtt subscriber (clean session) that records ``(topic, payload dict)``.

    Use ``async with Collector(url, topic) as c: ...; await c.wait_for(n)``.
    """

    def __init__(self, host: str, port: int, topic: str) -> None:
        self._host, self._port, self._topic = host, port, topic
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._grew = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self._client = aiomqtt.Client(self._host, self._port, identifier="test-collector", clean_session=True)
        await self._client.__aenter__()
        await self._client.subscribe(self._topic, qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None and self._client is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._client.__aexit__(None, None, None)

    async def wait_for(self, count: int) -> list[tuple[str, dict[str, Any]]]:
        """Wait until ``count`` messages arrived (a hang guard of 20 s, not a speed check)."""

        async def grown() -> None:
            while len(self.received) < count:
                self._grew.clear()
                await self._grew.wait()

        await asyncio.wait_for(grown(), 20)
        return self.received

    async def _collect(self) -> None:
        assert self._client is not None
        async for message in self._client.messages:
            self.received.append((str(message.topic), json.loads(message.payload)))
            self._grew.set()
