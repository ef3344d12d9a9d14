"""Builds a pipeline from a validated :class:`RunConfig` and runs it until the sources end or a signal."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sampler.package import WindowModel, load_window_model
from sampler.package_file import SUFFIX, is_package
from sinks import Sink
from sinks.console import ConsoleSink
from sinks.jsonl import JsonlSink
from sinks.mqtt import MqttSettings, MqttSink
from sources.spec import parse_source

from .config import ConfigError, RunConfig
from .inference import InferenceEngine
from .pipeline import Pipeline, PipelineSettings, Policy, RunSummary

log = logging.getLogger(__name__)


def demo_model_path(package: bool = False) -> Path:
    """The small DAS model bundled with das-stream (trained on the synthetic generator): the torch
    model file, or (``package``) its model package, exported from it."""
    return Path(__file__).resolve().parent / "assets" / ("demo" + (SUFFIX if package else ".pt"))


def default_model_path(cfg: RunConfig) -> Path:
    """The demo for ``run`` without --model: its package (ONNX Runtime, no torch needed), unless a
    torch engine is asked for, or a CUDA device where torch is installed and the engine is not onnx."""
    on_cuda = cfg.device.startswith("cuda") and cfg.engine != "onnx" and importlib.util.find_spec("torch") is not None
    return demo_model_path(package=not (cfg.engine in ("torch", "torch-cudagraph") or on_cuda))


def load_model(cfg: RunConfig) -> WindowModel:
    """The window model of --model (a package or a torch model file; default the demo), placed on --device."""
    path = Path(cfg.model) if cfg.model else default_model_path(cfg)
    if not is_package(path) and cfg.threads:
        import torch  # a torch model: torch's own threads too

        torch.set_num_threads(cfg.threads)
    model = load_window_model(path, device=cfg.device)
    if cfg.window is not None and cfg.window != model.num_frames:
        raise ConfigError(
            f"window={cfg.window} but model {path.name} was trained on windows of "
            f"{model.num_frames} frames; drop --window or retrain with that length"
        )
    return model


def frame_size(model: WindowModel) -> int:
    """The size sources deliver frames at for this model: its training preprocessing's, else its input size."""
    return int(model.preprocessing.get("size") or model.input_size)


def source_options(cfg: RunConfig, *, size: int) -> dict[str, Any]:
    """The ``parse_source`` options of every stream of a run (``run`` and each cluster stream actor)."""
    return dict(speed=cfg.speed, pacing=cfg.pacing, loop=cfg.loop, gray=True, size=size)


def pipeline_settings(cfg: RunConfig, model: WindowModel) -> PipelineSettings:
    """A run's pipeline settings for this model: resampling to the model's frame rate, stride, queues,
    gaps, budget, early exit, duration. The one place they are built, for ``run`` and for each stream
    actor of ``cluster``."""
    return PipelineSettings(
        fps=model.preprocessing.get("fps"),  # what training did to its clips ({} for older model files)
        stride=cfg.stride or model.num_frames,
        frame_queue=cfg.frame_queue,
        window_queue=cfg.window_queue,
        max_batch_windows=cfg.max_batch_windows,
        stats_interval=cfg.stats_interval,
        duration=cfg.duration,
        gap=cfg.gap,
        budget=cfg.budget,
        early_exit=cfg.early_exit,
    )


def build_sources(cfg: RunConfig, *, size: int) -> list:
    """One source per spec; several of the same kind get unique stream ids (name, name-1, ...)."""
    options = source_options(cfg, size=size)
    sources = [parse_source(spec, **options) for spec in cfg.sources]
    seen: dict[str, int] = {}
    for i, (spec, src) in enumerate(zip(cfg.sources, sources)):
        n = seen.get(src.name, 0)
        seen[src.name] = n + 1
        if n:
            sources[i] = parse_source(spec, name=f"{src.name}-{n}", **options)
    return sources


def overload_policy(cfg: RunConfig) -> Policy:
    if cfg.overload != "auto":
        return cfg.overload
    return "shrink" if cfg.pacing else "block"


def mqtt_sink(cfg: RunConfig) -> MqttSink:
    assert cfg.mqtt is not None  # built only when --mqtt is given (SINKS)
    settings = MqttSettings.from_url(
        cfg.mqtt,
        topic_prefix=cfg.topic_prefix,
        client_id=cfg.client_id,
        qos=cfg.qos,
        buffer_size=cfg.mqtt_buffer,
        tls_ca=cfg.tls_ca,
        tls_cert=cfg.tls_cert,
        tls_key=cfg.tls_key,
        tls_insecure=cfg.tls_insecure,
    )
    return MqttSink(settings)


# The sink registry: the RunConfig key that turns a sink on -> how to build it from the config.
# A new sink is its module in sinks/, its key in RunConfig (and flag in cli.py), and one line here.
SINKS: dict[str, Callable[[RunConfig], Sink]] = {
    "console": lambda cfg: ConsoleSink(),
    "jsonl": lambda cfg: JsonlSink(cfg.jsonl or ""),  # built only when --jsonl is given
    "mqtt": mqtt_sink,
}


def build_sinks(cfg: RunConfig) -> list[Sink]:
    """The sinks the config turns on, in registry order."""
    return [build(cfg) for key, build in SINKS.items() if getattr(cfg, key)]


def observe_addresses(cfg: RunConfig) -> tuple:
    """The parsed --web and --metrics addresses (None when off); ConfigError for a bad one."""
    if not (cfg.web or cfg.metrics):
        return None, None
    from .observe import parse_address
    from .observe.observer import METRICS_PORT, WEB_PORT

    return (
        cfg.web and parse_address(cfg.web, flag="--web", default_port=WEB_PORT),
        cfg.metrics and parse_address(cfg.metrics, flag="--metrics", default_port=METRICS_PORT),
    )


def build_pipeline(cfg: RunConfig) -> Pipeline:
    sinks = build_sinks(cfg)  # first: a bad broker URL fails before the model loads
    web, metrics = observe_addresses(cfg)  # a bad address fails before the model loads
    model = load_model(cfg)
    engine = InferenceEngine(model, backend=cfg.engine, max_windows=cfg.max_batch_windows, threads=cfg.threads)
    policy = overload_policy(cfg)
    sources = build_sources(cfg, size=frame_size(model))
    observers = []
    if cfg.web or cfg.metrics:
        from .observe import Observer

        observer = Observer(sources=sources, sinks=sinks, web=web, metrics=metrics)
        observer.attach_engine(engine)
        observers.append(observer)
    return Pipeline(
        sources=[(s, policy) for s in sources],
        engine=engine,
        sinks=sinks,
        settings=pipeline_settings(cfg, model),
        observers=observers,
    )


async def run_pipeline(pipeline: Pipeline) -> RunSummary:
    """Run with SIGINT/SIGTERM wired to a clean stop (flush, final stats, exit 0)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, pipeline.stop)
    try:
        async with contextlib.AsyncExitStack() as stack:
            for observer in pipeline.observers:  # their servers run for the whole run
                if isinstance(observer, contextlib.AbstractAsyncContextManager):
                    await stack.enter_async_context(observer)
            return await pipeline.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def delivery_errors(sinks: list) -> list[BaseException]:
    """One error per sink that accepted predictions it never delivered (e.g. MQTT overflow, or a
    broker never reached): the run must not end as a success then."""
    errors = []
    for sink in sinks:
        check = getattr(sink, "delivery_error", None)
        if callable(check) and (error := check()) is not None:
            errors.append(error)
    return errors


def run(cfg: RunConfig) -> RunSummary:
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pipeline = build_pipeline(cfg)
    sinks = list(pipeline.sinks.sinks)
    if threading.current_thread() is threading.main_thread():  # start-up is over (see das_stream.cli)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    summary = asyncio.run(run_pipeline(pipeline))
    summary.errors.extend(delivery_errors(sinks))
    return summary
