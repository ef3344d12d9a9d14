"""Append predictions and stats to a JSON Lines file (``--jsonl PATH``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType
from typing import TextIO

from core.errors import SinkError
from sinks.console import LineWriter
from sinks.messages import Prediction, Stats


class JsonlSink:
    """One JSON object per line, the same objects as the MQTT payloads (with "type").

    The file is opened for appending, so an earlier run's lines are kept; every line is
    flushed as it is written.

    Args:
        path: the file to append to; its directory must exist and be writable.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._writer: LineWriter | None = None

    async def __aenter__(self) -> JsonlSink:
        file = await asyncio.to_thread(self._open)
        self._writer = LineWriter(file, name=f"JSONL file '{self.path}'", close=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._writer is not None:
            await self._writer.aclose()
            self._writer = None

    async def publish_prediction(self, p: Prediction) -> None:
        await self._write(p.to_json())

    async def publish_stats(self, s: Stats) -> None:
        await self._write(s.to_json())

    async def _write(self, payload: bytes) -> None:
        if self._writer is None:
            raise RuntimeError("JsonlSink is not open; use 'async with JsonlSink(path)'")
        await self._writer.write(payload.decode())

    def _open(self) -> TextIO:
        try:
            return self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise SinkError(
                f"cannot write JSONL file '{self.path}': {exc.strerror or exc}; "
                "give a file path in an existing, writable directory"
            ) from exc
