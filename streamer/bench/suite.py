"""`das-stream bench`: will this keep up on my machine? Measured, side by side, in one run.

Every comparison runs its variants in the same process, one after the other on the same inputs,
so the ratios hold on a noisy machine even when absolute times wander. Items (numbered as in
docs/performance.md):

1. compute: sampler + classifier time per window, DAS at k/T = 0.25, 0.5, 0.75 and the full
   sequence (T = 32 frames of 224 x 224 gray by default);
2. sampler overhead: DAS alone (feature-resolution copies, features, attention, selection) per
   window, as a fraction of the full-sequence classifier time;
3. throughput: the whole pipeline replaying a video file with no pacing (decode, window, sampler,
   classifier, MQTT publish), input frames per second, DAS at 0.5 against the full sequence;
4. latency: the same replay paced at 30 fps: capture -> published and window close -> published;
5. overlap: stride T/2, frames embedded per input frame and the time the embedding cache saves;
6. memory: peak RSS over a long no-pacing stream and its growth after warm-up (full mode only);
7. streams: 4 synthetic streams at 30 fps in one process: per-stream p99 latency and drops;
8. capacity: the most concurrent 30 fps streams one process holds with no frame dropped and
   p99 window close -> published <= 50 ms, found by a sweep (DAS at k/T = 0.5 and the full
   sequence), and the engines' warm-up time. The streams replay frames rendered once before the
   run, so making them costs no more CPU than real decoding would (less: nothing is decoded).

Models: ``--model PATH`` times that model, a package or a torch model file (and a full-sequence
twin with the same T and input size: for a package, the same graphs embedding every frame);
without it, untrained torch models with T = 32 at 224 px (timing does not depend on weights);
see :func:`.inputs.bench_models`.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sampler.package import describe
from sinks.mqtt import MqttSettings, MqttSink
from sources.synthetic import SyntheticSource
from sources.video import VideoSource, read_video

from ..inference import InferenceEngine, resize_gray
from ..pipeline import Pipeline, PipelineSettings, Policy
from ..stats import frame_counts, percentiles
from ..window import Window
from .broker import local_broker
from .inputs import FrameMaker, ReplaySource, bench_models, headline, make_video, windows_of


@dataclass(frozen=True)
class BenchSettings:
    """What to measure and how long.

    Args:
        quick: shorter runs (the whole suite well under 5 minutes on 2 CPU cores).
        model: a model file to time (None: untrained models of ``num_frames`` at ``input_size``).
        device: "auto", "cpu" or "cuda".
        engine: the backbone's backend: "auto", "torch", "torch-cudagraph" or "onnx".
        num_frames, input_size, feature_size: the default models' window length, frame size
            and sampler feature resolution (56 = 224 / 4: the sampler's copy of each frame is an
            exact 4x area reduction, about 8x cheaper than a fractional one to 64 px).
        video: a video file to replay for items 3-4, whose frames item 8 replays too (None: a
            synthetic 640x480 H.264 clip, and item 8 replays synthetic frames).
        mqtt: broker URL for items 3-4 (None: start a local mosquitto if installed, else no MQTT).
        only: run only these items (names from ITEMS).
        streams: item 8 at this one number of streams instead of the sweep.
        capacity_p99_ms: item 8's latency bound.
        capacity_seconds: item 8's run time per point (None: 8 s with ``quick``, else 20 s).
        budget: the frames-per-second budget of items 4 and 8's ``early_exit_budget`` variant.
        repeats: items 4 and 8 run their variants alternately (A B C A B C ...) this many times.
    """

    quick: bool = False
    model: str | None = None
    device: str = "auto"
    engine: str = "auto"
    num_frames: int = 32
    input_size: int = 224
    feature_size: int = 56
    video: str | None = None
    mqtt: str | None = None
    only: tuple[str, ...] = ()
    streams: int | None = None
    capacity_p99_ms: float = 50.0
    capacity_seconds: float | None = None
    threads: int | None = None
    budget: float = 60.0
    repeats: int = 3


ITEMS = ("compute", "sampler", "throughput", "latency", "overlap", "memory", "streams", "capacity")


@dataclass(frozen=True)
class Variant:
    """How items 4 and 8 run the headline model: fixed k (every window embeds k frames, frames
    dropped when the classifier lags), the model's early exit, and the early exit under a frame
    budget with overload policy ``shrink``."""

    name: str
    early_exit: bool
    policy: Policy = "drop_oldest"
    budget: float | None = None


FIXED_K = Variant("fixed_k", early_exit=False)


def variants(s: BenchSettings) -> tuple[Variant, ...]:
    return (
        FIXED_K,
        Variant("early_exit", early_exit=True),
        Variant("early_exit_budget", early_exit=True, policy="shrink", budget=s.budget),
    )


def paired_ratios(values: dict[str, list[float]], base: str = "fixed_k") -> dict[str, dict[str, float]]:
    """Per variant, the median and range of its value over the base's, paired by repeat."""
    out = {}
    for name, vals in values.items():
        ratios = [v / b for v, b in zip(vals, values[base]) if b]
        if ratios:
            out[name] = {
                "median": round(statistics.median(ratios), 3),
                "min": round(min(ratios), 3),
                "max": round(max(ratios), 3),
            }
    return out


# --- timing helpers --------------------------------------------------------------------------
def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 3)


def _clear_stage_times(engine: InferenceEngine) -> None:
    """Forget the engine's recorded stage times (an item starts its own count)."""
    for samples in engine.stage_ms.values():
        samples.clear()


def _process_each(engine: InferenceEngine, windows: list[Window], *, reuse: bool) -> list:
    """Windows one call each (no batching across windows); ``reuse=False`` forgets every
    embedding before each window, to measure what the cache saves."""
    out = []
    for w in windows:
        if not reuse:
            engine.on_worker(engine.cache.emb.clear)
        out.extend(engine.process([w]))
    return out


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- items -----------------------------------------------------------------------------------
def bench_compute(engines: dict[str, InferenceEngine], s: BenchSettings) -> dict[str, Any]:
    """Items 1-2: per-window time of each variant on fresh frames, and DAS's own share."""
    repeats = 10 if s.quick else 25
    any_engine = next(iter(engines.values()))
    T, size = any_engine.num_frames, any_engine.input_size
    maker = FrameMaker(size)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for eng in engines.values():
        _clear_stage_times(eng)
    for r in range(repeats + 1):  # variants interleaved, so a slow spell of the machine hits them all
        for name, eng in engines.items():
            windows = windows_of(maker.frames(T), T, T)
            t0 = time.perf_counter()
            eng.process(windows)
            if r:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    per_window = {name: round(1000 * statistics.median(ts), 3) for name, ts in times.items()}
    full = per_window["full"]
    out: dict[str, Any] = {
        "num_frames": T,
        "input_size": size,
        "window_ms": per_window,
        "ratio_vs_full": {k: round(v / full, 3) for k, v in per_window.items()},
        # median of each engine stage (warm-up round included), see InferenceEngine.stage_ms
        "stages_ms": {
            name: {stage: round(statistics.median(v), 3) for stage, v in eng.stage_ms.items()}
            for name, eng in engines.items()
        },
    }

    # Item 2: what DAS adds per window: feature-resolution copies of T frames, features, attention, top-k.
    das = engines[headline(engines)]
    frames = maker.frames(T)

    def sampler_only() -> None:  # the order from the window's copies alone (features made now)
        small = np.stack([resize_gray(f.image, das.feature_size) for f in frames])[None]
        das.model.order(small, None, small.reshape(1, T, -1).max(axis=2) > 0)

    sampler_ms = _median_ms(sampler_only, 4 * repeats)
    out["sampler_ms"] = sampler_ms
    out["sampler_overhead"] = round(sampler_ms / full, 4)
    return out


async def replay(
    engine: InferenceEngine,
    video: Path,
    *,
    pacing: bool,
    mqtt: str | None,
    stride: int,
    duration: float | None = None,
    variant: Variant = FIXED_K,
) -> dict[str, Any]:
    src = VideoSource(video, pacing=pacing, loop=duration is not None, gray=True, size=engine.input_size)
    sinks = (
        [MqttSink(MqttSettings.from_url(mqtt, topic_prefix="bench", client_id=f"bench-{os.getpid()}"))] if mqtt else []
    )
    pipe = Pipeline(
        sources=[(src, variant.policy if pacing else "block")],
        engine=engine,
        sinks=sinks,
        settings=PipelineSettings(
            stride=stride, stats_interval=3600, duration=duration, early_exit=variant.early_exit, budget=variant.budget
        ),
    )
    t0 = time.perf_counter()
    summary = await pipe.run()
    wall = time.perf_counter() - t0
    (final,) = summary.final.values()
    if summary.errors:
        raise summary.errors[0]
    return {
        "frames": final.frames_in,
        "seconds": round(wall, 2),
        "fps_in": round(final.frames_in / wall, 1),
        "windows": final.windows,
        "dropped": final.frames_dropped,
        "latency_ms": final.latency_ms,
        "latency_close_ms": final.extra["latency_close_ms"],
        "compute_saved": final.compute_saved,
        "frames_per_window": final.extra["frames_per_window"],
        "exits": final.extra["exits"],
    }


def bench_throughput(engines: dict[str, InferenceEngine], video: Path, mqtt: str | None) -> dict[str, Any]:
    """Item 3: no-pacing replay through the whole pipeline, DAS against the full sequence."""
    head = headline(engines)
    runs = {}
    for name in (head, "full"):
        eng = engines[name]
        runs[name] = asyncio.run(replay(eng, video, pacing=False, mqtt=mqtt, stride=eng.num_frames))
    return {
        "video": str(video),
        "mqtt": mqtt or "none",
        "runs": runs,
        "throughput_ratio": round(runs[head]["fps_in"] / runs["full"]["fps_in"], 3),
    }


def bench_latency(
    engine: InferenceEngine, video: Path, mqtt: str | None, seconds: float, s: BenchSettings
) -> dict[str, Any]:
    """Item 4: real-time replay at the file's rate (30 fps), each variant for ``seconds``, the
    variants alternated ``s.repeats`` times (machine drift hits them alike)."""
    per: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants(s)}
    for r in range(s.repeats):
        order = variants(s)[r % 3 :] + variants(s)[: r % 3]  # rotate who goes first
        for v in order:
            _clear_stage_times(engine)
            run = asyncio.run(
                replay(engine, video, pacing=True, mqtt=mqtt, stride=engine.num_frames, duration=seconds, variant=v)
            )
            # Where window close -> published goes: the engine's stages (the rest is queueing and publishing).
            run["stages_ms"] = {name: percentiles(samples) for name, samples in engine.stage_ms.items()}
            per[v.name].append(run)
    p99 = {name: [r["latency_close_ms"]["p99"] for r in runs] for name, runs in per.items()}
    return {
        "seconds_each": seconds,
        "repeats": s.repeats,
        "runs": per,
        "latency_close_p99_ms": {name: round(statistics.median(v), 2) for name, v in p99.items()},
        "frames_per_window": {
            name: round(statistics.median(r["frames_per_window"]["mean"] for r in runs), 3)
            for name, runs in per.items()
        },
        "p99_ratio_vs_fixed_k": paired_ratios(p99),
    }


def bench_overlap(engine: InferenceEngine, s: BenchSettings) -> dict[str, Any]:
    """Item 5: stride T/2; the embedding cache against recomputing every window's picks."""
    T = engine.num_frames
    n = (8 if s.quick else 24) * T
    maker = FrameMaker(engine.input_size, seed=2)
    out = {}
    for reuse in (True, False):
        frames = maker.frames(n)
        windows = windows_of(frames, T, T // 2)
        t0 = time.perf_counter()
        embedded = sum(r.frames_embedded for r in _process_each(engine, windows, reuse=reuse))
        out["cache" if reuse else "recompute"] = {
            "seconds": round(time.perf_counter() - t0, 3),
            "frames_embedded_per_frame": round(embedded / n, 3),
        }
    out["time_saved"] = round(1 - out["cache"]["seconds"] / out["recompute"]["seconds"], 3)
    return out


def bench_memory(engine: InferenceEngine, frames: int) -> dict[str, Any]:
    """Item 6: RSS over a long no-pacing synthetic stream; growth after the first 10%."""
    samples: list[tuple[int, float]] = []

    async def main() -> None:
        src = SyntheticSource(name="mem", pacing=False, size=engine.input_size, frames=frames)
        pipe = Pipeline(
            sources=[(src, "block")],
            engine=engine,
            sinks=[],
            settings=PipelineSettings(stride=engine.num_frames, stats_interval=3600),
        )

        async def sample() -> None:
            while True:
                samples.append((pipe.streams[0].stats.frames_in, _rss_mb()))
                await asyncio.sleep(0.5)

        task = asyncio.create_task(sample())
        await pipe.run()
        task.cancel()

    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    warm = [rss for n, rss in samples if n >= frames // 10] or [samples[-1][1]]
    quarter = max(1, len(warm) // 4)
    early, late = statistics.median(warm[:quarter]), statistics.median(warm[-quarter:])
    return {
        "frames": frames,
        "seconds": round(wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_early_mb": round(early, 1),
        "rss_late_mb": round(late, 1),
        # median RSS of the last quarter of the run against the first quarter after warm-up
        # (the allocator makes single samples swing by tens of MB)
        "growth_after_warmup_mb": round(late - early, 1),
        "rss_range_after_warmup_mb": [round(min(warm), 1), round(max(warm), 1)],
    }


def bench_streams(engine: InferenceEngine, streams: int, seconds: float) -> dict[str, Any]:
    """Item 7: several paced synthetic streams at 30 fps in one process."""

    async def main() -> dict[str, Any]:
        sources = [SyntheticSource(name=f"probe{i}", fps=30.0, size=engine.input_size, seed=i) for i in range(streams)]
        pipe = Pipeline(
            sources=[(src, "drop_oldest") for src in sources],
            engine=engine,
            sinks=[],
            settings=PipelineSettings(stride=engine.num_frames, stats_interval=3600, duration=seconds),
        )
        summary = await pipe.run()
        return {
            name: {
                "frames": st.frames_in,
                "dropped": st.frames_dropped,
                "windows": st.windows,
                "latency_p99_ms": st.latency_ms["p99"],
                "latency_close_p99_ms": st.extra["latency_close_ms"]["p99"],
            }
            for name, st in summary.final.items()
        }

    per_stream = asyncio.run(main())
    return {
        "streams": streams,
        "fps_each": 30,
        "seconds": seconds,
        "per_stream": per_stream,
        "dropped_total": sum(v["dropped"] for v in per_stream.values()),
    }


def capacity_point(
    engine: InferenceEngine,
    streams: int,
    seconds: float,
    images: list[np.ndarray],
    fps: float = 30.0,
    variant: Variant = FIXED_K,
) -> dict[str, Any]:
    """``streams`` replayed streams at ``fps`` for ``seconds`` in one pipeline; their starts are
    spread over one window's time, as independent probes' would be."""
    _clear_stage_times(engine)

    async def main() -> dict[str, Any]:
        t0 = time.monotonic() + 0.2
        period = engine.num_frames / fps
        sources = [ReplaySource(f"probe{i}", images, fps=fps, start=t0 + period * i / streams) for i in range(streams)]
        pipe = Pipeline(
            sources=[(src, variant.policy) for src in sources],
            engine=engine,
            sinks=[],
            settings=PipelineSettings(
                stride=engine.num_frames,
                stats_interval=3600,
                duration=seconds,
                early_exit=variant.early_exit,
                budget=variant.budget,
            ),
        )
        summary = await pipe.run()
        close = [ms for st in pipe.streams for ms in st.stats.close_latency_ms]
        used = [n for st in pipe.streams for n in st.stats.frames_used]
        finals = summary.final.values()
        return {
            "streams": streams,
            "variant": variant.name,
            "frames": sum(st.frames_in for st in finals),
            "dropped": sum(st.frames_dropped for st in finals),
            "windows": sum(st.windows for st in finals),
            "latency_close_ms": percentiles(close),
            "frames_per_window": frame_counts(used),
            "k_max_lowest": pipe.shrink.lowest if pipe.shrink is not None else engine.k,
            # the engine's steps per call; after warm-up no embed call should stand far above its median
            "stages_ms": {
                name: {**percentiles(v), "max": round(max(v, default=0.0), 2)} for name, v in engine.stage_ms.items()
            },
        }

    return asyncio.run(main())


def bench_capacity(engines: dict[str, InferenceEngine], s: BenchSettings, log: Callable[[str], None]) -> dict[str, Any]:
    """Item 8: per variant, the most streams with 0 drops and p99 close -> published within the bound.

    The full sequence runs fixed k; the headline model runs each :func:`variants` entry, the
    variants alternated at every stream count (A B C, then the next count). The sweep doubles the
    streams while any variant holds, then bisects for each variant between the last count that
    held and the first that did not. ``s.streams`` runs that one count instead.
    """
    seconds = s.capacity_seconds or (8.0 if s.quick else 20.0)
    head = headline(engines)
    any_engine = next(iter(engines.values()))
    if s.video:  # the video's frames, as the latency item reads them: what a trained model's exit sees
        images = list(read_video(s.video, gray=True, size=any_engine.input_size)[0])
    else:
        images = FrameMaker(any_engine.input_size, seed=5).images  # rendered once, replayed by every stream
    runs = {}
    plan = [(head, v) for v in variants(s)] + [("full", FIXED_K)]
    points: dict[str, dict[int, dict[str, Any]]] = {f"{m}/{v.name}": {} for m, v in plan}

    def holds(model: str, v: Variant, n: int) -> bool:
        key = f"{model}/{v.name}"
        if n not in points[key]:
            p = points[key][n] = capacity_point(engines[model], n, seconds, images, variant=v)
            p["holds"] = p["dropped"] == 0 and p["latency_close_ms"]["p99"] <= s.capacity_p99_ms
            log(
                f"   {key}: {n} streams: dropped {p['dropped']}, p99 close {p['latency_close_ms']['p99']} ms, "
                f"{p['frames_per_window']['mean']:.2f} frames/window"
            )
        return points[key][n]["holds"]

    if s.streams:
        best = {f"{m}/{v.name}": (s.streams if holds(m, v, s.streams) else 0) for m, v in plan}
    else:
        good = {f"{m}/{v.name}": 0 for m, v in plan}
        bad: dict[str, int | None] = {key: None for key in good}
        n = 1
        while n <= 1024 and any(bad[k] is None for k in good):
            for m, v in plan:  # alternated at every count
                key = f"{m}/{v.name}"
                if bad[key] is None:
                    if holds(m, v, n):
                        good[key] = n
                    else:
                        bad[key] = n
            n *= 2
        for m, v in plan:
            key = f"{m}/{v.name}"
            while (worse := bad[key]) is not None and worse - good[key] > max(1, good[key] // 8):  # to within 1/8
                mid = (good[key] + worse) // 2
                if holds(m, v, mid):
                    good[key] = mid
                else:
                    bad[key] = mid
        best = good
    for m, v in plan:
        key = f"{m}/{v.name}"
        runs[key] = {
            "capacity_streams": best[key],
            "warm_up_s": round(engines[m].warm_up_s, 2),
            "points": [points[key][n] for n in sorted(points[key])],
        }
    return {
        "fps_each": 30,
        "seconds_per_point": seconds,
        "p99_bound_ms": s.capacity_p99_ms,
        "budget_fps": s.budget,
        "frames": (f"the frames of {s.video}" if s.video else "pre-rendered synthetic frames")
        + " at the model's input size, replayed at 30 fps (no decode)",
        "runs": runs,
    }


def machine() -> dict[str, Any]:
    import onnxruntime

    torch = sys.modules.get("torch")  # only when a torch model was loaded
    gpu = torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "gpu": gpu,
    }


def run_bench(s: BenchSettings, *, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run the selected items; return one JSON-ready dict with the headline keys first."""
    wanted = set(s.only or ITEMS)
    models = bench_models(
        s.model, num_frames=s.num_frames, input_size=s.input_size, feature_size=s.feature_size, device=s.device
    )
    if not wanted & {"compute", "sampler"}:  # the other items use the headline variant and the full sequence
        models = {name: models[name] for name in (headline(models), "full")}
    if s.threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(s.threads)
    engines = {
        name: InferenceEngine(m, device=s.device, backend=s.engine, threads=s.threads) for name, m in models.items()
    }
    head = headline(engines)
    result: dict[str, Any] = {}
    details: dict[str, Any] = {
        "settings": {**s.__dict__, "only": list(s.only)},
        "machine": machine(),
        "device": str(engines[head].device),
        "engine": engines[head].backend,
        "model": describe(engines[head].model),
        "exit_rule": engines[head].exit_rule.describe(),
        "warm_up_s": {name: round(e.warm_up_s, 2) for name, e in engines.items()},
    }
    if wanted & {"compute", "sampler"}:
        log("1-2: compute per window and sampler overhead")
        details["compute"] = c = bench_compute(engines, s)
        result["compute_ratio"] = c["ratio_vs_full"][head]
        result["sampler_overhead"] = c["sampler_overhead"]
    with tempfile.TemporaryDirectory() as tmp, local_broker(s.mqtt) as mqtt:
        video = Path(s.video) if s.video else Path(tmp) / "bench.mp4"
        if wanted & {"throughput", "latency"} and not s.video:
            log("making a 640x480 H.264 test clip")
            make_video(video, frames=600 if s.quick else 1800)
        if "throughput" in wanted:
            log("3: no-pacing replay throughput")
            details["throughput"] = t = bench_throughput(engines, video, mqtt)
            result["throughput_ratio"] = t["throughput_ratio"]
            result["throughput_fps"] = t["runs"][head]["fps_in"]
        if "latency" in wanted:
            seconds = 20.0 if s.quick else 60.0
            log(f"4: paced replay latency, {seconds:g} s per variant, alternated {s.repeats} times")
            details["latency"] = lat = bench_latency(engines[head], video, mqtt, seconds, s)
            fixed = lat["runs"]["fixed_k"]
            result["latency_p99_ms"] = statistics.median(r["latency_ms"]["p99"] for r in fixed)
            result["latency_close_p99_ms"] = lat["latency_close_p99_ms"]["fixed_k"]
            result["latency_close_p99_ms_early_exit"] = lat["latency_close_p99_ms"]["early_exit"]
            result["frames_per_window_early_exit"] = lat["frames_per_window"]["early_exit"]
    if "overlap" in wanted:
        log("5: overlapping windows, cache against recompute")
        details["overlap"] = bench_overlap(engines[head], s)
    if "memory" in wanted and not s.quick:
        log("6: memory over 100,000 frames")
        details["memory"] = bench_memory(engines[head], 100_000)
    if "streams" in wanted:
        seconds = 10.0 if s.quick else 30.0
        log(f"7: 4 streams at 30 fps for {seconds:g} s")
        details["streams"] = bench_streams(engines[head], 4, seconds)
    if "capacity" in wanted:
        log("8: capacity, concurrent 30 fps streams" + (f" ({s.streams})" if s.streams else " (sweep)"))
        details["capacity"] = cap = bench_capacity({head: engines[head], "full": engines["full"]}, s, log)
        result["capacity_streams"] = cap["runs"][f"{head}/fixed_k"]["capacity_streams"]
        result["capacity_streams_early_exit"] = cap["runs"][f"{head}/early_exit"]["capacity_streams"]
        result["capacity_streams_early_exit_budget"] = cap["runs"][f"{head}/early_exit_budget"]["capacity_streams"]
        result["capacity_streams_full"] = cap["runs"]["full/fixed_k"]["capacity_streams"]
    return {**result, **details}


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, default=str)
