"""``--web`` and ``--metrics`` of a cluster run: one web view and one metrics registry for all the
streams, served by the driver.

Each stream actor keeps a :class:`~streamer.cluster.actors.Relay` (the newest frame, the
predictions since the last fetch with the frames of the newest window, the newest stats); the
driver fetches them a few times a second and hands them to one
:class:`streamer.observe.Observer` (the same view and metrics as ``das-stream run``), which runs
its servers on an event loop in a thread of the driver. A stream whose actor is restarting is
simply fetched again next time (its health then says it delivers no frames).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from sinks.messages import Prediction, Stats

log = logging.getLogger(__name__)

POLL_S = 0.25
_PREDICTION = [f.name for f in dataclasses.fields(Prediction)]
_STATS = [f.name for f in dataclasses.fields(Stats)]


def _record(cls: type, names: list[str], data: dict[str, Any]) -> Any:
    values = {k: data[k] for k in names if k in data}
    if "selected" in values:
        values["selected"] = tuple(values["selected"])
    return cls(**values)


class Watch:
    """The driver's observer of a cluster run (see the module docstring).

    Args:
        actors: stream name -> stream actor (started with ``observe``).
        web, metrics: the parsed ``--web`` / ``--metrics`` addresses (None: off).
    """

    def __init__(self, actors: Mapping[str, Any], *, web: Any, metrics: Any) -> None:
        from streamer.observe import Observer

        self.actors = dict(actors)
        self.observer = Observer(streams=list(self.actors), web=web, metrics=metrics)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="das-stream-watch", daemon=True)

    @property
    def urls(self) -> dict[str, str]:
        return self.observer.urls

    def start(self) -> None:
        """Serve; raises the observer's one-line ConfigError (e.g. a port in use) here."""
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self.observer.start()
        except BaseException as exc:  # noqa: BLE001 - handed to start() in the driver's thread
            self._error = exc
            self._started.set()
            return
        self._started.set()
        try:
            while not self._stop.is_set():
                await self._fetch()
                try:
                    await asyncio.wait_for(self._stop.wait(), POLL_S)
                except TimeoutError:
                    pass
        finally:
            await self.observer.stop()

    async def _fetch(self) -> None:
        refs = {name: actor.observe.remote() for name, actor in self.actors.items()}
        for name, ref in refs.items():
            try:
                got = await asyncio.wait_for(asyncio.wrap_future(ref.future()), 5.0)
            except Exception:  # noqa: BLE001 - an actor restarting or gone: next time
                continue
            if got:
                self.feed(name, got)

    def feed(self, name: str, got: dict[str, Any]) -> None:
        """Hand one relay's take to the observer (on the observer's loop)."""
        obs = self.observer
        if got["frame"] is not None:
            obs.on_frame(name, got["frame"])
            obs.view.stream(name).frames_seen = got["frames_seen"]
        windows = got["windows"]
        for i, w in enumerate(windows):
            frames = got["window_frames"] if i == len(windows) - 1 else ()
            result = SimpleNamespace(
                window=SimpleNamespace(frames=frames, t_close=w["t_close"]),
                **{k: w[k] for k in ("selected", "scores", "frames_used", "exit", "k_max")},
            )
            obs.on_window(result, _record(Prediction, _PREDICTION, w["prediction"]))
        if got["stats"] is not None:
            obs.on_stats(_record(Stats, _STATS, got["stats"]))
        for stream, error in got["ended"].items():
            obs.on_stream_end(stream, None if error is None else RuntimeError(error))
