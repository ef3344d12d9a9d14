"""`das-stream run` settings: one validated object built from a YAML file plus command-line flags.

Every key of :class:`RunConfig` can appear in a YAML file (``--config``); a flag given on the
command line overrides the file. Unknown keys and bad values raise
:class:`~sampler.errors.ConfigError` naming the key, the file and what is allowed. Values are
checked by the rules every config shares (:mod:`sampler.settings`). The defaults of the
pipeline's and the MQTT sink's knobs are theirs (:class:`PipelineSettings`,
:class:`MqttSettings`); ``das-stream run --help`` prints them from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from core.bounds import check_fields
from core.errors import ConfigError
from core.settings import DEVICE_FORMS, OneOf, coerce_fields, defaults, is_device_name, load_flat
from sinks.mqtt import MqttSettings

from .inference.embedders import BACKENDS
from .pipeline import PipelineSettings, Policy

# The numbers a user gives, checked against their bounds in core.bounds.
_BOUNDED = (
    "frame_queue",
    "window_queue",
    "max_batch_windows",
    "mqtt_buffer",
    "window",
    "stride",
    "threads",
    "speed",
    "stats_interval",
    "duration",
    "gap",
    "budget",
)


@dataclass(frozen=True)
class RunConfig:
    """Settings of one streaming run (see ``das-stream run --help`` for each flag).

    Attributes:
        sources: source specs, one stream each; the forms are those of
            :data:`sources.spec.SOURCES` (listed by ``das-stream run --help``). A single string
            is one spec (specs may contain commas).
        model: model file from ``das-stream train`` (None: the bundled demo model).
        window: window length T; must equal the model's (None: take the model's).
        stride: distance between window starts (None: the window length, no overlap).
        speed, pacing, loop: replay options of ``video:`` (and pacing of ``synthetic:``).
        overload: what happens when the classifier lags: ``shrink`` (lower the frames used per
            window, k_max, before any frame is dropped; then drop the oldest, counted),
            ``drop_oldest``, ``block`` (back-pressure on the source), or ``auto`` (block for
            un-paced replays, shrink for everything live).
        budget: backbone frames per second for the whole process (None: no cap); windows stop
            adding frames when it runs out (``exit: budget``), see streamer/budget.py.
        early_exit: use the model's calibrated exit rule (stop embedding a window's frames once
            its prediction is settled); false: every window uses k_max frames.
        frame_queue, window_queue, max_batch_windows: queue sizes and inference batching.
        device, engine, threads: where and how the classifier runs (device: auto, cpu, cuda,
            cuda:N).
        mqtt, topic_prefix, qos, client_id, mqtt_buffer, tls_ca, tls_cert, tls_key,
            tls_insecure: the MQTT sink (None: no MQTT).
        jsonl: also write every message to this JSON-lines file.
        console: print predictions and stats to stdout.
        stats_interval: seconds between stats messages.
        duration: stop after this many seconds (None: run until the sources end or Ctrl-C).
        gap: seconds without a frame after which a stream's open window is classified, padded,
            and the next window marked ``gap_before`` (0: never).
        log_level: debug, info, warning or error.
        web: ``HOST:PORT`` of the live web view (None: off); see docs/observe.md.
        metrics: ``HOST:PORT`` of Prometheus ``/metrics`` and ``/healthz`` (None: off).
    """

    sources: tuple[str, ...] = ("synthetic:",)
    model: str | None = None
    window: int | None = None
    stride: int | None = None
    speed: float = 1.0
    pacing: bool = True
    loop: bool = False
    overload: Literal["auto", Policy] = "auto"
    budget: float | None = PipelineSettings.budget
    early_exit: bool = PipelineSettings.early_exit
    frame_queue: int = PipelineSettings.frame_queue
    window_queue: int = PipelineSettings.window_queue
    max_batch_windows: int = PipelineSettings.max_batch_windows
    device: str = "auto"
    engine: Annotated[str, OneOf(BACKENDS)] = "auto"
    threads: int | None = None
    mqtt: str | None = None
    topic_prefix: str = MqttSettings.topic_prefix
    qos: Literal[0, 1, 2] = MqttSettings.qos  # type: ignore[assignment]
    client_id: str | None = MqttSettings.client_id
    mqtt_buffer: int = MqttSettings.buffer_size
    tls_ca: str | None = MqttSettings.tls_ca
    tls_cert: str | None = MqttSettings.tls_cert
    tls_key: str | None = MqttSettings.tls_key
    tls_insecure: bool = MqttSettings.tls_insecure
    jsonl: str | None = None
    console: bool = True
    stats_interval: float = PipelineSettings.stats_interval
    duration: float | None = PipelineSettings.duration
    gap: float = PipelineSettings.gap
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    web: str | None = None
    metrics: str | None = None
    _origin: str = field(default="the command line", repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.sources, str):  # one spec; not split at commas like other lists
            object.__setattr__(self, "sources", (self.sources,))
        coerce_fields(self, context=f" (in {self._origin})")
        check_fields(self, _BOUNDED, context=f" (in {self._origin})")
        if not self.sources:
            raise ConfigError(f"no source given (in {self._origin}); add --source SPEC, e.g. --source synthetic:")
        if not is_device_name(self.device):
            raise ConfigError(f"device must be one of {DEVICE_FORMS}, got {self.device!r} (in {self._origin})")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``{key: default}``, e.g. for the help text of the flags."""
        return {k: v for k, v in defaults(cls).items() if not k.startswith("_")}

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
        """Build from an optional YAML file, then apply the non-None ``overrides`` (the flags)."""
        return load_flat(cls, path, overrides)
