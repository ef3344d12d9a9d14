"""`das-stream cluster` settings: one validated object built from a YAML file plus flags.

The keys that ``das-stream run`` also has (sources, model, stride, replay and queue options, the
MQTT broker) mean the same here; the cluster adds the embedder pool (``replicas`` and their
resources, Serve batching), the resources of each stream actor, failure handling and the Ray
address. Unknown keys and bad values raise :class:`~sampler.errors.ConfigError` in one line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.bounds import check_fields
from core.errors import ConfigError
from core.settings import coerce_fields, load_flat
from streamer.config import RunConfig
from streamer.pipeline import Policy

# The numbers a user gives, checked against their bounds in core.bounds.
_BOUNDED = (
    "frame_queue",
    "window_queue",
    "max_batch_windows",
    "replicas",
    "max_batch_frames",
    "mqtt_buffer",
    "stride",
    "threads",
    "speed",
    "stats_interval",
    "duration",
    "request_timeout",
    "connect_timeout",
)


@dataclass(frozen=True)
class ClusterConfig:
    """Settings of one cluster run (see ``das-stream cluster --help``).

    Attributes:
        sources: source specs, one stream actor each (as ``das-stream run --source``).
        model: model file (None: the bundled demo model); read once by the driver and shipped
            to every actor and replica, so worker nodes need no copy of it.
        stride, speed, pacing, loop, overload, frame_queue, window_queue, max_batch_windows:
            as in ``das-stream run``, per stream.
        replicas: embedder replicas in the Ray Serve deployment.
        replica_cpus, replica_gpus: Ray resources reserved per replica.
        engine, device: backbone engine and device of each replica ("auto": CUDA when the
            replica's node has one).
        threads: torch / onnxruntime threads per replica (None: ceil(replica_cpus)).
        max_batch_frames: most frames one replica embeds in one call (``@serve.batch``, sized
            in frames; at least the model's k).
        batch_wait_ms: how long a replica waits to fill a batch.
        stream_cpus: Ray CPUs reserved per stream actor (source, windows, sampler, head).
        stream_restarts: times Ray restarts a dead stream actor (-1: always).
        request_timeout: seconds one embedding request may take before it is sent again.
        request_retries: times a failed or timed-out request is sent again (each counted).
        address: Ray cluster to join (``ray://HEAD:10001`` or ``HOST:6379``); None starts a
            local Ray instance for this run.
        connect_timeout: seconds the address has to answer.
        mqtt, topic_prefix, qos, client_id, mqtt_buffer, tls_*: the MQTT sink of every stream
            actor; each actor's client id is ``<client_id>-<stream>``.
        stats_interval: seconds between stats messages.
        report_interval: seconds between a replica's reports for ``cluster status`` (0: every request).
        duration: stop after this many seconds (None: until the sources end or a signal).
        log_level: debug, info, warning or error.
    """

    sources: tuple[str, ...] = ()
    model: str | None = None
    stride: int | None = None
    speed: float = 1.0
    pacing: bool = True
    loop: bool = False
    overload: Literal["auto", Policy] = "auto"
    frame_queue: int = 256
    window_queue: int = 16
    max_batch_windows: int = 8
    replicas: int = 1
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    engine: Literal["torch", "onnx"] = "torch"
    device: str = "auto"
    threads: int | None = None
    max_batch_frames: int = 64
    batch_wait_ms: float = 5.0
    stream_cpus: float = 0.25
    stream_restarts: int = -1
    request_timeout: float = 30.0
    request_retries: int = 10
    address: str | None = None
    connect_timeout: float = 10.0
    mqtt: str | None = None
    topic_prefix: str = "das"
    qos: Literal[0, 1, 2] = 1
    client_id: str | None = None
    mqtt_buffer: int = 10000
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False
    stats_interval: float = 5.0
    report_interval: float = 1.0
    duration: float | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "warning"
    _origin: str = field(default="the command line", repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.sources, str):  # one spec (specs may contain commas)
            object.__setattr__(self, "sources", (self.sources,))
        coerce_fields(self, context=f" (in {self._origin})")
        where = f"(in {self._origin})"
        if not self.sources:
            raise ConfigError(f"no sources {where}; list at least one under 'sources:', e.g. - synthetic:")
        check_fields(self, _BOUNDED, context=f" {where}")
        for name in (
            "replica_cpus",
            "replica_gpus",
            "stream_cpus",
            "batch_wait_ms",
            "request_retries",
            "report_interval",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)} {where}")
        if self.stream_restarts < -1:
            raise ConfigError(f"stream_restarts must be -1 (always) or >= 0, got {self.stream_restarts} {where}")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ClusterConfig:
        """Build from an optional YAML file, then apply the non-None ``overrides`` (the flags)."""
        return load_flat(cls, path, overrides)

    def run_config(self) -> RunConfig:
        """The ``das-stream run`` settings one stream actor runs with (sources, sinks, queues)."""
        shared = {
            k: getattr(self, k)
            for k in RunConfig.keys()
            if k in self.keys() and k not in ("device", "engine", "threads", "duration", "log_level")
        }
        return RunConfig(**shared, console=False, device="cpu", _origin=self._origin)

    @property
    def policy(self) -> str:
        """The frame-queue overload policy of every stream (``auto`` resolved as in ``run``)."""
        if self.overload != "auto":
            return self.overload
        return "drop_oldest" if self.pacing else "block"
