"""Where predictions and stats go: MQTT, the console, a JSONL file, or several at once.

Every sink is an async context manager with ``async publish_prediction(p)`` and
``async publish_stats(s)`` (see docs/design.md); none blocks the event loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from types import TracebackType
from typing import Protocol

from sinks.messages import Prediction, Stats


class Sink(Protocol):
    """What the streamer publishes to.

    A sink may also have ``counters`` (a mapping of names to ints, e.g. the MQTT sink's buffer
    overflow and reconnects) and a ``stats_key`` (the name they are published under in a stream's
    ``Stats.extra``; the class name by default): :meth:`FanOut.counters` collects them.
    """

    async def __aenter__(self) -> Sink: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...

    async def publish_prediction(self, p: Prediction) -> None: ...

    async def publish_stats(self, s: Stats) -> None: ...


class FanOut:
    """Publish every message to several sinks, in the order given; opens and closes them together.

    Args:
        sinks: the sinks; each is entered on ``__aenter__`` and exited (in reverse) on
            ``__aexit__``, even when another one fails.
    """

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = sinks
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> FanOut:
        async with contextlib.AsyncExitStack() as stack:
            for sink in self.sinks:
                await stack.enter_async_context(sink)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._stack.__aexit__(exc_type, exc, tb)

    async def publish_prediction(self, p: Prediction) -> None:
        for sink in self.sinks:
            await sink.publish_prediction(p)

    async def publish_stats(self, s: Stats) -> None:
        for sink in self.sinks:
            await sink.publish_stats(s)

    def counters(self) -> dict[str, dict[str, int]]:
        """Every sink's counters that it exposes, by ``stats_key`` (or class name)."""
        out: dict[str, dict[str, int]] = {}
        for sink in self.sinks:
            counters = getattr(sink, "counters", None)
            if isinstance(counters, Mapping):
                out[getattr(sink, "stats_key", type(sink).__name__)] = dict(counters)
        return out


__all__ = ["FanOut", "Sink"]
