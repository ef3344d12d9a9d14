"""Prometheus metrics of a run, on a private registry (several pipelines or tests never collide).

Two kinds of numbers:

- the frame counters belong to the pipeline (``streamer.stats.StreamStats``, published as
  :class:`~sinks.messages.Stats`); a custom collector reports the latest Stats of each stream at
  scrape time (prometheus_client's documented way to expose counts another object owns), so
  ``das_stream_frames_total`` always satisfies in = forwarded + skipped + dropped + pending and
  equals the final stats at the end of a run;
- per-event observations (latencies, engine stage times, predictions per label) are prometheus_client
  Histograms and Counters fed as the events happen. The MQTT sink's counters are read from the
  sink at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sinks.messages import Prediction, Stats

# Seconds; from a few ms (engine stages on a GPU) to tens of seconds (a stalled sink).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

OUTCOMES = ("in", "forwarded", "skipped", "dropped")


class _StatsCollector(Collector):
    """Reports the latest Stats of every stream, the MQTT sinks' counters and the health."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterable[Any]:
        frames = CounterMetricFamily(
            "das_stream_frames",
            "Frames per stream by outcome: in = forwarded + skipped + dropped + pending",
            labels=["stream", "outcome"],
        )
        pending = GaugeMetricFamily(
            "das_stream_frames_pending", "Frames in a window that has not closed yet", labels=["stream"]
        )
        bad = CounterMetricFamily(
            "das_stream_bad_messages", "Malformed messages the source rejected", labels=["stream"]
        )
        windows = CounterMetricFamily("das_stream_windows", "Windows classified", labels=["stream"])
        backbone = CounterMetricFamily(
            "das_stream_frames_embedded", "Frames embedded by the classifier backbone", labels=["stream"]
        )
        saved = GaugeMetricFamily(
            "das_stream_compute_saved_ratio", "1 - frames embedded / (windows * T)", labels=["stream"]
        )
        fps = GaugeMetricFamily("das_stream_input_fps", "Input frame rate over the run so far", labels=["stream"])
        for name, s in sorted(self.m.stats.items()):
            for outcome, value in zip(OUTCOMES, (s.frames_in, s.frames_forwarded, s.frames_skipped, s.frames_dropped)):
                frames.add_metric([name, outcome], value)
            pending.add_metric([name], s.frames_pending)
            bad.add_metric([name], s.bad_messages)
            windows.add_metric([name], s.windows)
            backbone.add_metric([name], float(s.extra.get("frames_embedded", 0)))
            saved.add_metric([name], s.compute_saved)
            fps.add_metric([name], s.fps_in)
        yield from (frames, pending, bad, windows, backbone, saved, fps)

        up = GaugeMetricFamily("das_stream_source_up", "1 while the stream's source delivers frames", labels=["stream"])
        for name, ok in sorted(self.m.source_up().items()):
            up.add_metric([name], 1.0 if ok else 0.0)
        yield up

        mqtt = [s for s in self.m.sinks if isinstance(getattr(s, "counters", None), Mapping) and hasattr(s, "settings")]
        if mqtt:
            buffered = GaugeMetricFamily(
                "das_stream_mqtt_buffered", "Messages waiting or in flight to the broker", labels=["broker"]
            )
            connected = GaugeMetricFamily(
                "das_stream_mqtt_connected", "1 while connected to the broker", labels=["broker"]
            )
            published = CounterMetricFamily(
                "das_stream_mqtt_published", "Messages acknowledged by the broker", labels=["broker"]
            )
            overflow = CounterMetricFamily(
                "das_stream_mqtt_overflow", "Messages dropped because the buffer was full", labels=["broker"]
            )
            reconnects = CounterMetricFamily(
                "das_stream_mqtt_reconnects", "Connections to the broker after the first", labels=["broker"]
            )
            for sink in mqtt:
                broker = getattr(sink.settings, "url", type(sink).__name__)  # the URL without the password
                c = sink.counters
                buffered.add_metric([broker], c.get("buffered", 0))
                connected.add_metric([broker], 1.0 if getattr(sink, "connected", True) else 0.0)
                published.add_metric([broker], c.get("published", 0))
                overflow.add_metric([broker], c.get("overflow", 0))
                reconnects.add_metric([broker], c.get("reconnects", 0))
            yield from (buffered, connected, published, overflow, reconnects)


class Metrics:
    """The run's metrics on their own :class:`CollectorRegistry`.

    Args:
        sinks: the pipeline's sinks; those with ``counters`` and ``settings`` (the MQTT sink) are
            reported as ``das_stream_mqtt_*``.
        source_up: returns ``{stream: delivering?}`` (the health check's view), reported as
            ``das_stream_source_up``.
    """

    def __init__(self, *, sinks: Sequence[Any] = (), source_up: Callable[[], dict[str, bool]] = dict) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.sinks = list(sinks)
        self.source_up = source_up
        self.stats: dict[str, Stats] = {}
        self.capture_latency = Histogram(
            "das_stream_capture_to_publish_seconds",
            "Capture of a window's last frame -> its prediction handed to every sink",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.close_latency = Histogram(
            "das_stream_close_to_publish_seconds",
            "Window close -> its prediction handed to every sink",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "das_stream_engine_stage_seconds",
            "Inference engine time per batch of windows, by stage "
            "(sampler: copies, features, attention, top-k; embed: backbone on new picks; head: pooling, MLP)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "das_stream_predictions",
            "Predictions published, by most probable class",
            ["stream", "label"],
            registry=self.registry,
        )
        self.registry.register(_StatsCollector(self))

    def on_stats(self, stats: Stats) -> None:
        self.stats[stats.stream] = stats

    def on_prediction(self, prediction: Prediction, *, t_close: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.capture_latency.labels(prediction.stream).observe(max(0.0, now - prediction.t_last))
        self.close_latency.labels(prediction.stream).observe(max(0.0, now - t_close))
        self.predictions.labels(prediction.stream, prediction.label).inc()

    def on_stage(self, stage: str, seconds: float) -> None:
        """An engine stage time (thread-safe: prometheus_client metrics take their own locks)."""
        self.stage.labels(stage).observe(seconds)
