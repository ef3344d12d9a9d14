"""Prometheus metrics of a run, on a private registry (several pipelines or tests never collide).

Two kinds of numbers:

- the frame counters belong to the pipeline (``streamer.stats.StreamStats``, published as
  :class:`~sinks.messages.Stats`); a custom collector reports the latest Stats of each stream at
  scrape time (prometheus_client's documented way to expose counts another object owns). The
  outcomes of ``das_stream_frames_total`` partition the decided frames, so ``sum by (stream)``
  of it plus ``das_stream_frames_pending`` is ``das_stream_frames_received_total``, and at the end
  of a run they equal the final stats;
- per-event observations (latencies, engine stage times, predictions per label) are prometheus_client
  Histograms and Counters fed as the events happen. The MQTT sink's counters are read from the
  sink at scrape time.

Rates are left to PromQL (``rate()`` of the counters); the one rate exported, ``das_stream_input_fps``,
is a gauge of the last few seconds (``streamer.stats.RECENT_S``), not a whole-run average. No
``_created`` series are exported (``disable_created_metrics``: they double the series and carry
nothing a scrape's own time does not).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sinks.messages import Prediction, Stats

disable_created_metrics()  # process-wide: das-stream's are the only prometheus_client metrics it serves

# Seconds; from a few ms (engine stages on a GPU) to tens of seconds (a stalled sink).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FRAME_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # frames per window: the round ladder's sizes
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# What became of the frames received; with the pending gauge they add up to the frames received.
OUTCOMES = ("forwarded", "skipped", "dropped", "resampled_out")
# A stream's state (see streamer.observe.observer.Observer.states); exactly one is 1 at a time.
STATES = ("starting", "running", "stalled", "reconnecting", "ended", "failed")


def _count(extra: Mapping[str, Any], *keys: str) -> float:
    return float(sum(v for k in keys if isinstance(v := extra.get(k, 0), (int, float)) and not isinstance(v, bool)))


class _StatsCollector(Collector):
    """Reports the latest Stats of every stream, the stream states and the MQTT sinks' counters."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterable[Any]:
        def family(kind: type, name: str, doc: str, labels: Sequence[str] = ("stream",)) -> Any:
            return kind(name, doc, labels=list(labels))

        received = family(CounterMetricFamily, "das_stream_frames_received", "Frames received from the source")
        frames = family(
            CounterMetricFamily,
            "das_stream_frames",
            "Decided frames by outcome; sum by stream + pending = received",
            ("stream", "outcome"),
        )
        pending = family(GaugeMetricFamily, "das_stream_frames_pending", "Frames in a window not classified yet")
        bad = family(CounterMetricFamily, "das_stream_bad_messages", "Malformed messages or frames the source rejected")
        windows = family(
            CounterMetricFamily,
            "das_stream_windows",
            "Windows classified, by how they closed (full, or flushed early and padded: a pause or the end)",
            ("stream", "closed"),
        )
        embedded = family(CounterMetricFamily, "das_stream_frames_embedded", "Frames embedded by the backbone")
        saved = family(GaugeMetricFamily, "das_stream_compute_saved_ratio", "1 - frames embedded / (windows * T)")
        fps = family(GaugeMetricFamily, "das_stream_input_fps", "Frames received per second over the last 5 s")
        reconnects = family(
            CounterMetricFamily, "das_stream_source_reconnects", "Recoveries of a lost feed (frames flowing again)"
        )
        missed = family(
            CounterMetricFamily,
            "das_stream_source_missed_frames",
            "Frames the source knows it never received (sequence jumps; estimated over a lost feed)",
        )
        pauses = family(CounterMetricFamily, "das_stream_pauses", "Pauses longer than --gap that closed a window early")
        wait_s = 0.0
        for name, s in sorted(self.m.stats.items()):
            received.add_metric([name], s.frames_in)
            for outcome in OUTCOMES:
                frames.add_metric([name, outcome], getattr(s, f"frames_{outcome}"))
            pending.add_metric([name], s.frames_pending)
            bad.add_metric([name], s.bad_messages)
            flushed = _count(s.extra, "windows_flushed")
            windows.add_metric([name, "full"], s.windows - flushed)
            windows.add_metric([name, "flushed"], flushed)
            embedded.add_metric([name], _count(s.extra, "frames_embedded"))
            saved.add_metric([name], s.compute_saved)
            fps.add_metric([name], _count(s.extra, "fps_recent"))
            reconnects.add_metric([name], _count(s.extra, "reconnects"))
            missed.add_metric([name], _count(s.extra, "gap_frames", "missed_frames"))
            pauses.add_metric([name], _count(s.extra, "gaps_closed"))
            wait_s = max(wait_s, _count(s.extra, "publish_wait_ms") / 1000.0)
        yield from (received, frames, pending, bad, windows, embedded, saved, fps, reconnects, missed, pauses)
        yield CounterMetricFamily(
            "das_stream_publish_wait_seconds",
            "Time the classifier waited for room in the publish queue (a slow sink)",
            value=wait_s,
        )

        state = family(GaugeMetricFamily, "das_stream_state", "1 for the stream's current state", ("stream", "state"))
        for name, current in sorted(self.m.states().items()):
            for one in STATES:
                state.add_metric([name, one], 1.0 if one == current else 0.0)
        yield state

        mqtt = [s for s in self.m.sinks if isinstance(getattr(s, "counters", None), Mapping) and hasattr(s, "settings")]
        if mqtt:
            buffered = family(
                GaugeMetricFamily, "das_stream_mqtt_buffered", "Messages waiting or in flight", ("broker",)
            )
            connected = family(GaugeMetricFamily, "das_stream_mqtt_connected", "1 while connected", ("broker",))
            published = family(
                CounterMetricFamily, "das_stream_mqtt_published", "Messages acknowledged by the broker", ("broker",)
            )
            overflow = family(
                CounterMetricFamily, "das_stream_mqtt_overflow", "Messages dropped: the buffer was full", ("broker",)
            )
            refused = family(
                CounterMetricFamily,
                "das_stream_mqtt_refused",
                "Messages dropped: the broker refused them (too large for its packet limit)",
                ("broker",),
            )
            failed = family(
                CounterMetricFamily, "das_stream_mqtt_failed", "Messages lost: not delivered by the end", ("broker",)
            )
            reconnected = family(
                CounterMetricFamily, "das_stream_mqtt_reconnects", "Connections after the first", ("broker",)
            )
            for sink in mqtt:
                broker = getattr(sink.settings, "url", type(sink).__name__)  # the URL without the password
                c = sink.counters
                buffered.add_metric([broker], c.get("buffered", 0))
                connected.add_metric([broker], 1.0 if getattr(sink, "connected", True) else 0.0)
                published.add_metric([broker], c.get("published", 0))
                overflow.add_metric([broker], c.get("overflow", 0))
                refused.add_metric([broker], c.get("refused", 0))
                failed.add_metric([broker], c.get("failed", 0))
                reconnected.add_metric([broker], c.get("reconnects", 0))
            yield from (buffered, connected, published, overflow, refused, failed, reconnected)


class Metrics:
    """The run's metrics on their own :class:`CollectorRegistry`.

    Args:
        sinks: the pipeline's sinks; those with ``counters`` and ``settings`` (the MQTT sink) are
            reported as ``das_stream_mqtt_*``.
        states: returns ``{stream: state}`` (one of :data:`STATES`), reported as ``das_stream_state``.
    """

    def __init__(self, *, sinks: Sequence[Any] = (), states: Callable[[], dict[str, str]] = dict) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.sinks = list(sinks)
        self.states = states
        self.stats: dict[str, Stats] = {}
        self.capture_latency = Histogram(
            "das_stream_capture_to_publish_seconds",
            "Capture of a full window's last frame -> its prediction handed to every sink",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.close_latency = Histogram(
            "das_stream_close_to_publish_seconds",
            "A full window's close -> its prediction handed to every sink",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.flushed_latency = Histogram(
            "das_stream_flushed_capture_to_publish_seconds",
            "Capture of a flushed window's last frame -> its prediction handed to every sink "
            "(includes the pause that closed the window; not the pipeline's latency)",
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
        self.frames_used = Histogram(
            "das_stream_frames_used",
            "Frames a window's prediction pooled (best first, until settled, k_max or the budget)",
            ["stream"],
            buckets=FRAME_BUCKETS,
            registry=self.registry,
        )
        self.exits = Counter(
            "das_stream_window_exits",
            "Windows by why the engine stopped adding frames: confident (the exit rule), k_max, budget",
            ["stream", "exit"],
            registry=self.registry,
        )
        self.k_max = Gauge(
            "das_stream_k_max",
            "The most frames a window may use now (the model's k, lowered under --overload shrink)",
            ["stream"],
            registry=self.registry,
        )
        self.registry.register(_StatsCollector(self))

    def on_stats(self, stats: Stats) -> None:
        self.stats[stats.stream] = stats

    def on_prediction(self, prediction: Prediction, *, t_close: float, now: float | None = None) -> None:
        """A published prediction; a flushed window's (``padded``) latency goes to its own histogram."""
        now = time.time() if now is None else now
        capture = max(0.0, now - prediction.t_last)
        if prediction.padded:
            self.flushed_latency.labels(prediction.stream).observe(capture)
        else:
            self.capture_latency.labels(prediction.stream).observe(capture)
            self.close_latency.labels(prediction.stream).observe(max(0.0, now - t_close))
        self.predictions.labels(prediction.stream, prediction.label).inc()
        self.frames_used.labels(prediction.stream).observe(prediction.frames_used)
        self.exits.labels(prediction.stream, prediction.exit).inc()
        self.k_max.labels(prediction.stream).set(prediction.k_max)

    def on_stage(self, stage: str, seconds: float) -> None:
        """An engine stage time (thread-safe: prometheus_client metrics take their own locks)."""
        self.stage.labels(stage).observe(seconds)
