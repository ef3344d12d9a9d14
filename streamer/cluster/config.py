"""`das-stream cluster` settings: :class:`~streamer.config.RunConfig` plus the cluster's own keys.

Every key of ``das-stream run`` means the same here, with the same default and the same check
(the class derives from ``RunConfig``; nothing is declared twice): each stream actor runs its
source with them exactly as ``run`` would. The cluster adds the embedder pool (``replicas`` and
their resources, Serve batching), the resources and placement of each stream actor, failure
handling and the Ray address. ``device``, ``engine`` and ``threads`` are those of each embedder
replica. Unknown keys and bad values raise :class:`~core.errors.ConfigError` in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.bounds import check_fields
from core.errors import ConfigError
from core.settings import load_flat
from streamer.config import RunConfig

# The cluster's own numbers, checked against their bounds in core.bounds (the keys of `run` are
# checked by RunConfig).
_BOUNDED = (
    "replicas",
    "replica_cpus",
    "replica_gpus",
    "max_batch_frames",
    "batch_wait_ms",
    "stream_cpus",
    "stream_restarts",
    "request_timeout",
    "request_retries",
    "connect_timeout",
    "report_interval",
)


@dataclass(frozen=True)
class ClusterConfig(RunConfig):
    """Settings of one cluster run (see ``das-stream cluster --help``); the keys of
    :class:`~streamer.config.RunConfig`, plus:

    Attributes:
        console: print every prediction on the driver's stdout (off by default here: a ward's
            streams would flood it; use ``das-stream subscribe``).
        replicas: embedder replicas in the Ray Serve deployment.
        replica_cpus, replica_gpus: Ray resources reserved per replica (``replica_gpus`` > 0
            needs GPUs in the Ray cluster: a one-line error otherwise).
        max_batch_frames: most frames one replica embeds in one call (``@serve.batch``, sized
            in frames; at least the model's k).
        batch_wait_ms: how long a replica waits to fill a batch.
        stream_cpus: Ray CPUs reserved per stream actor (source, windows, sampler, head).
        stream_restarts: times Ray restarts a dead stream actor (-1: always).
        nodes: stream name -> where its actor runs: a node label ``key=value`` (``ray start
            --labels``) or the name of a custom resource (``ray start --resources``), pinned; with
            ``prefer:`` before it, there while that node lives (docs/scale-out.md).
        request_timeout: seconds one embedding request may take before it is sent again.
        request_retries: times a failed or timed-out request is sent again (each counted).
        address: Ray cluster to join (``HOST:6379``, ``ray://HEAD:10001`` or ``auto``: the Ray
            running on this host); None starts a private Ray instance on loopback for this run.
        connect_timeout: seconds the address has to answer.
        report_interval: seconds between a replica's reports for ``cluster status`` (0: every request).
    """

    console: bool = False
    replicas: int = 1
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    max_batch_frames: int = 64
    batch_wait_ms: float = 5.0
    stream_cpus: float = 0.25
    stream_restarts: int = -1
    nodes: Mapping[str, str] = field(default_factory=dict)
    request_timeout: float = 30.0
    request_retries: int = 10
    address: str | None = None
    connect_timeout: float = 10.0
    report_interval: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()  # the keys of `run`, checked as `run` checks them
        where = f" (in {self._origin})"
        check_fields(self, _BOUNDED, context=where)
        if self.jsonl:
            raise ConfigError(
                f"jsonl is not available in a cluster run{where}: each stream runs on some node of the cluster; "
                "publish to MQTT and keep a file with `das-stream subscribe --mqtt URL --raw > FILE`"
            )
        for name, where_to in self.nodes.items():
            if not isinstance(where_to, str) or not where_to.removeprefix("prefer:").strip():
                raise ConfigError(
                    f"nodes: {name!r} must name a node label key=value or a custom resource "
                    f"(prefer: before it lets the stream move when that node dies), got {where_to!r}{where}"
                )

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ClusterConfig:
        """Build from an optional YAML file, then apply the non-None ``overrides`` (the flags)."""
        return load_flat(cls, path, overrides)

    def run_config(self) -> RunConfig:
        """The ``das-stream run`` settings a stream actor runs with (the keys they share)."""
        return RunConfig(**{k: getattr(self, k) for k in RunConfig.keys()}, _origin=self._origin)
