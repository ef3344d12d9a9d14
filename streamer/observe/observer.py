"""The pipeline's observer: live web view, Prometheus metrics and a health check.

The pipeline calls three plain, synchronous methods on the event loop; each returns at once and
never raises into the pipeline:

- :meth:`Observer.on_frame` for every frame that comes in (a reference is kept, nothing copied),
- :meth:`Observer.on_window` for every published prediction (with its :class:`WindowResult`),
- :meth:`Observer.on_stats` for every stats snapshot (the pipeline sends one with every window and
  one every second),
- :meth:`Observer.on_stream_end` when a stream's source has ended (cleanly or with an error).

Every stream is in one of :data:`~streamer.observe.metrics.STATES` (:meth:`Observer.states`):
``starting`` (no frame yet), ``running``, ``stalled`` (no frame for ``stall_s``), ``reconnecting``
(the source lost its feed and is getting it back), ``ended`` (the source ended) or ``failed`` (it
ended with an error). ``/healthz`` is 200 while every stream runs and every sink is connected;
``/healthz/STREAM`` is 200 while that stream runs, 410 once it has ended, 503 otherwise.

``async with Observer(...)`` (or :meth:`start` / :meth:`stop`) serves, with aiohttp on the same
event loop, the web view on ``web`` and ``/metrics`` + ``/healthz`` on ``metrics``. When both
addresses are the same, one server answers all the routes.

Why aiohttp and not prometheus_client's ``start_http_server`` for ``/metrics``: the health check
needs its own route and status codes, which that server cannot add; one HTTP stack on the
pipeline's loop needs no extra thread, reads the pipeline's state without locks, and closes with
the run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.web import AppRunner
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.errors import ConfigError
from sinks.messages import Prediction, Stats
from sources.frame import Frame

from .address import Address, parse_address
from .metrics import Metrics
from .view import WINDOW_FIGURES, ViewState, encode_jpeg

log = logging.getLogger(__name__)

WEB_PORT = 8080
METRICS_PORT = 9108
IDLE_TIMEOUT_S = 15.0  # an HTTP connection with no complete request for this long is closed
STATIC = resources.files(__package__) / "static"


class Observer:
    """Watches a run (see the module docstring).

    Args:
        streams: the stream ids the run starts with (the health check waits for each of them).
        sources: the run's sources (their names join ``streams``); one whose ``reconnecting``
            attribute is true (a probe that lost its feed) is reported as reconnecting.
        sinks: the pipeline's sinks; one with a ``connected`` attribute (MQTT) must be connected
            for the run to be healthy, and the MQTT sink's counters become metrics.
        web: ``HOST:PORT`` of the web view, or None for none.
        metrics: ``HOST:PORT`` of ``/metrics`` and ``/healthz``, or None for none.
        live_fps: most live-image updates per second per stream.
        history_s: seconds of class probabilities on the chart.
        stall_s: a stream with no frame for this long is reported as stalled.
        clock: the monotonic clock of frame arrivals and stalls (a parameter for tests).
        idle_timeout: seconds after which the servers close a connection that has not sent a
            complete request (an idle keep-alive, or a client sending its request too slowly).
    """

    def __init__(
        self,
        *,
        streams: Sequence[str] = (),
        sources: Sequence[Any] = (),
        sinks: Sequence[Any] = (),
        web: str | Address | None = None,
        metrics: str | Address | None = None,
        live_fps: float = 4.0,
        history_s: float = 300.0,
        stall_s: float = 5.0,
        idle_timeout: float = IDLE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock  # monotonic seconds: frame arrivals and stalls (a parameter for tests)
        self.web = _address(web, "--web", WEB_PORT)
        self.metrics_address = _address(metrics, "--metrics", METRICS_PORT)
        for flag, address in (("--web", self.web), ("--metrics", self.metrics_address)):
            if address is not None and not address.loopback:
                log.warning(
                    "%s %s is reachable from other machines and has no authentication; use 127.0.0.1 to keep it local",
                    flag,
                    address,
                )
        self.sources = {s.name: s for s in sources}
        self.expected = list(dict.fromkeys([*streams, *self.sources]))
        self.sinks = list(sinks)
        self.stall_s = stall_s
        self.idle_timeout = idle_timeout
        self.view = ViewState(live_fps=live_fps, history_s=history_s)
        for name, source in self.sources.items():  # the live image: the source's own, unresized
            self.view.stream(name).preview = getattr(source, "preview", None)
        self._ended: dict[str, str | None] = {}  # stream -> its error, None when it ended cleanly
        self.metrics = Metrics(sinks=self.sinks, states=self.states)
        self._runners: list[AppRunner] = []
        self.urls: dict[str, str] = {}  # "web" / "metrics" -> http://host:port the server bound
        self._failed: set[str] = set()

    # --- called by the pipeline: synchronous, O(1), never raise ---
    def on_frame(self, stream: str, frame: Frame) -> None:
        try:
            self.view.frame(stream, frame, self._clock())
        except Exception:  # noqa: BLE001 - an observer must never stop the pipeline
            self._failed_once("on_frame")

    def on_window(self, result: Any, prediction: Prediction) -> None:
        """``result`` is a :class:`streamer.inference.WindowResult` (its window and selected seqs)."""
        try:
            now = time.time()
            window = result.window
            self.metrics.on_prediction(prediction, t_close=window.t_close, now=now)
            figures = {k: v for k in WINDOW_FIGURES if (v := getattr(result, k, None)) is not None}
            self.view.window(
                window.frames,
                tuple(result.selected),
                prediction,
                window.t_close,
                now,
                scores=tuple(getattr(result, "scores", ())),
                figures=figures,
            )
        except Exception:  # noqa: BLE001
            self._failed_once("on_window")

    def on_stats(self, stats: Stats) -> None:
        try:
            self.metrics.on_stats(stats)
            self.view.stats(stats)
            if stats.final and stats.stream not in self._ended:
                self._ended[stats.stream] = stats.extra.get("error")
        except Exception:  # noqa: BLE001
            self._failed_once("on_stats")

    def on_stream_end(self, stream: str, error: BaseException | None) -> None:
        try:
            self._ended[stream] = None if error is None else str(error)
        except Exception:  # noqa: BLE001
            self._failed_once("on_stream_end")

    def attach_engine(self, engine: Any) -> None:
        """Record the inference engine's stage times as ``das_stream_engine_stage_seconds``."""
        listeners = getattr(engine, "stage_listeners", None)
        if isinstance(listeners, list):
            listeners.append(self.metrics.on_stage)

    def _failed_once(self, where: str) -> None:
        if where not in self._failed:
            self._failed.add(where)
            log.exception("observer: %s failed (the pipeline goes on; logged once)", where)

    # --- health ---
    def names(self) -> list[str]:
        """Every stream: those the run started with, then any other that sent something."""
        return list(dict.fromkeys([*self.expected, *self.view.streams]))

    def state(self, name: str, now: float | None = None) -> tuple[str, str]:
        """``(state, detail)`` of one stream (see the module docstring); detail may be empty."""
        if name in self._ended:
            error = self._ended[name]
            return ("failed", error) if error else ("ended", "")
        source = self.sources.get(name)
        if getattr(source, "reconnecting", False) is True:
            return "reconnecting", "the source lost its feed"
        view = self.view.streams.get(name)
        if view is None or view.t_latest is None:
            return "starting", "no frame yet"
        age = (self._clock() if now is None else now) - view.t_latest
        if age > self.stall_s:
            return "stalled", f"no frame for {age:.1f} s"
        return "running", ""

    def states(self) -> dict[str, str]:
        """``{stream: state}`` of every stream."""
        now = self._clock()
        return {name: self.state(name, now)[0] for name in self.names()}

    def health(self) -> list[str]:
        """Why the run is unhealthy (an empty list: healthy)."""
        now = self._clock()
        reasons = []
        names = self.names()
        if not names:
            reasons.append("no source yet")
        for name in names:
            state, detail = self.state(name, now)
            if state != "running":
                reasons.append(f"stream {name} {state}" + (f": {detail}" if detail else ""))
        for sink in self.sinks:
            if getattr(sink, "connected", True) is False:
                where = getattr(getattr(sink, "settings", None), "url", type(sink).__name__)
                reasons.append(f"sink {where} not connected")
        return reasons

    # --- servers ---
    async def __aenter__(self) -> Observer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the servers (none when neither address is set)."""
        servers: list[tuple[Address, web.Application, list[str]]] = []
        for role, address, add_routes in (
            ("web", self.web, self._web_routes),
            ("metrics", self.metrics_address, self._metrics_routes),
        ):
            if address is None:
                continue
            shared = [s for s in servers if s[0] == address and address.port != 0]  # port 0: always its own
            if shared:
                app, roles = shared[0][1], shared[0][2]
            else:
                app, roles = web.Application(), []
                app.router.add_get("/healthz", self._healthz)
                app.router.add_get("/healthz/{stream}", self._healthz_stream)
                servers.append((address, app, roles))
            add_routes(app)
            roles.append(role)
        try:
            for address, app, roles in servers:
                runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, keepalive_timeout=self.idle_timeout)
                await runner.setup()
                self._runners.append(runner)
                site = web.TCPSite(runner, address.host, address.port)
                try:
                    await site.start()
                except OSError as exc:
                    raise ConfigError(
                        f"cannot serve {' and '.join(roles)} on {address}: {exc.strerror or exc}; "
                        f"choose another address with --{roles[0]} HOST:PORT"
                    ) from None
                host, port = runner.addresses[0][:2]
                url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
                for role in roles:
                    self.urls[role] = url
                    log.info("%s: %s%s", role, url, "/metrics" if role == "metrics" else "/")
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    async def _healthz_stream(self, request: web.Request) -> web.Response:
        name = request.match_info["stream"]
        if name not in self.names():
            raise web.HTTPNotFound(text=f"no stream {name!r}; streams: {', '.join(self.names()) or 'none yet'}\n")
        state, detail = self.state(name)
        status = {"running": 200, "ended": 410}.get(state, 503)
        return web.Response(status=status, text=state + (f": {detail}" if detail else "") + "\n")

    def _metrics_routes(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self._metrics)

    def _web_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._index)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/window/{stream}", self._window)
        app.router.add_get("/live/{stream}.jpg", self._live)
        app.router.add_get("/favicon.ico", self._favicon)
        app.router.add_static("/static/", str(STATIC), append_version=False)

    async def _healthz(self, request: web.Request) -> web.Response:
        reasons = self.health()
        if reasons:
            return web.Response(status=503, text="unhealthy: " + "; ".join(reasons) + "\n")
        return web.Response(text="ok\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)  # on the loop: reads the pipeline's state without locks
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text=(STATIC / "index.html").read_text(), content_type="text/html")

    async def _state(self, request: web.Request) -> web.Response:
        try:
            since = float(request.query.get("since", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="since must be a number (seconds since the epoch)") from None
        state = self.view.state(since=since)
        state["health"] = self.health()
        now = self._clock()
        for name in self.names():
            entry = state["streams"].setdefault(name, self.view.empty_state())
            entry["state"], entry["state_detail"] = self.state(name, now)
        return web.json_response(state, headers={"Cache-Control": "no-store"})

    async def _window(self, request: web.Request) -> web.Response:
        w = self.view.last_window(request.match_info["stream"])
        if w is None:
            raise web.HTTPNotFound(text="no window closed yet on this stream")
        thumbs = await asyncio.to_thread(self.view.thumbnails, w, self.view.aspect(request.match_info["stream"]))
        body = {**self.view.window_summary(w), "thumbs": thumbs}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _favicon(self, request: web.Request) -> web.Response:
        body = (STATIC / "favicon.svg").read_bytes()
        return web.Response(body=body, content_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    async def _live(self, request: web.Request) -> web.Response:
        stream = request.match_info["stream"]
        now = self._clock()
        try:  # the size the page shows it at: a small panel costs a small JPEG
            side = self.view.live_side(int(request.query["size"]) if "size" in request.query else None)
        except ValueError:
            raise web.HTTPBadRequest(text="size must be a whole number of pixels") from None
        jpeg, todo = self.view.live_jpeg(stream, now, side)
        if todo is not None:
            fresh, _ = await asyncio.to_thread(encode_jpeg, todo, side)
            self.view.store_live(stream, todo, fresh, now, side)
            jpeg = fresh
        if jpeg is None:
            raise web.HTTPNotFound(text="no frame yet on this stream")
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


def _address(value: str | Address | None, flag: str, port: int) -> Address | None:
    if value is None or isinstance(value, Address):
        return value
    return parse_address(value, flag=flag, default_port=port)
