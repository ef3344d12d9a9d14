"""The cluster path against `das-stream run` on this machine; prints one JSON object.

    PYTHONPATH=$PWD python benchmarks/bench_cluster.py --streams 3 --warmup 8 --seconds 20
    PYTHONPATH=$PWD python benchmarks/bench_cluster.py --skip-run --paced-off --rounds 3   # 1 vs 2 replicas

With ``--rounds N`` the cluster items run N times, 1 and 2 replicas alternated (1, 2, 2, 1, 1, 2,
...) in one private Ray instance, and ``replicas_2_over_1`` gives the median and the range of the
per-round ratios of unpaced frames/s (a shared machine's load swings between items; pairing
adjacent items cancels most of it).

The bundled demo model unless --model (T = 16, k = 8, 112 px), synthetic sources, no MQTT in
either path, so that only the pipeline differs. Every figure is taken in steady state: after
--warmup seconds (actor start, first batches), latency samples are cleared and frame and CPU
counters read; --seconds later they are read again and the streams stopped.

- ``run``: the streams through the single-process pipeline (``das-stream run``), at 30 fps
  (``paced``: drops, latency capture -> published p50/p99, CPU per frame) and as fast as it goes
  (``unpaced``: aggregate frames per second, back-pressure, no drops).
- ``cluster_<R>``: the same through a local Ray with R replicas of 1 CPU (stream actors 0.25
  CPU). CPU per frame is summed over every process of this benchmark's process tree: the driver
  and everything the local Ray instance runs (raylet, GCS, Serve controller, actors, replicas).
  Also the array bytes each stream sent to the pool and got back, per second, and the mean frames
  per replica batch (how well ``@serve.batch`` filled its batches across streams).
- ``wire``: bytes per stream per second of frames at the model's input size, with DAS (the frames
  the sampler forwarded, measured) and with the full sequence (every frame).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def specs(n: int) -> tuple[str, ...]:
    return tuple(f"synthetic:?fps=30&seed={i}" for i in range(n))


def tree_cpu() -> float:
    total = 0.0
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def summarise(finals: list[dict], frames: int, wall: float, cpu: float) -> dict:
    lat = [f["latency_ms"] for f in finals]
    out = {
        "frames": frames,
        "wall_s": round(wall, 2),
        "fps_total": round(frames / wall, 1),
        "dropped": sum(f["frames_dropped"] for f in finals),
        "latency_p50_ms": round(max(x["p50"] for x in lat), 1),
        "latency_p99_ms": round(max(x["p99"] for x in lat), 1),
        "cpu_ms_per_frame": round(1000.0 * cpu / max(1, frames), 2),
        "forwarded_fraction": round(
            sum(f["frames_forwarded"] for f in finals) / max(1, sum(f["frames_in"] for f in finals)), 3
        ),
    }
    wire = [f["extra"].get("wire") for f in finals if f["extra"].get("wire")]
    if wire:
        total_s = sum(f["frames_in"] for f in finals) / 30.0  # stream-seconds of input at 30 fps
        out["bytes_to_pool_per_stream_s"] = round(sum(w["bytes_to_pool"] for w in wire) / total_s)
        out["bytes_from_pool_per_stream_s"] = round(sum(w["bytes_from_pool"] for w in wire) / total_s)
    return out


async def _run_once(n: int, pacing: bool, warmup: float, seconds: float, model: str | None, threads: int) -> dict:
    from streamer import app
    from streamer.config import RunConfig

    cfg = RunConfig(sources=specs(n), model=model, pacing=pacing, console=False, threads=threads, log_level="warning")
    pipe = app.build_pipeline(cfg)
    task = asyncio.create_task(pipe.run())
    await asyncio.sleep(warmup)
    for st in pipe.streams:
        st.stats.latency_ms.clear()
    f0, c0, t0 = sum(st.stats.frames_in for st in pipe.streams), tree_cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    f1, c1, t1 = sum(st.stats.frames_in for st in pipe.streams), tree_cpu(), time.monotonic()
    pipe.stop()
    summary = await task
    return summarise([s.to_dict() for s in summary.final.values()], f1 - f0, t1 - t0, c1 - c0)


def bench_cluster(
    n: int, pacing: bool, warmup: float, seconds: float, model: str | None, replicas: int, early_exit: bool = True
) -> dict:
    import ray

    from streamer.cluster.config import ClusterConfig
    from streamer.cluster.driver import Cluster

    cfg = ClusterConfig(
        sources=specs(n),
        model=model,
        pacing=pacing,
        replicas=replicas,
        replica_cpus=1.0,
        stream_cpus=0.25,
        early_exit=early_exit,
        log_level="warning",
    )
    cluster = Cluster(cfg)
    cluster.start()
    actors = list(cluster.actors.values())
    while min(ray.get([a.frames_in.remote() for a in actors])) == 0:  # every actor up and reading
        time.sleep(0.2)
    time.sleep(warmup)
    f0 = sum(ray.get([a.clear_latency.remote() for a in actors]))
    c0, t0 = tree_cpu(), time.monotonic()
    time.sleep(seconds)
    f1 = sum(ray.get([a.frames_in.remote() for a in actors]))
    c1, t1 = tree_cpu(), time.monotonic()
    cluster.stop()
    cluster.wait()
    snap = cluster.snapshot()
    out = summarise(list(cluster.final.values()), f1 - f0, t1 - t0, c1 - c0)
    out["load_avg"] = round(os.getloadavg()[0], 1)
    out["replica_frames"] = {r: f["frames"] for r, f in snap["replicas"].items()}
    batches = sum(f["batches"] for f in snap["replicas"].values())
    out["mean_batch_frames"] = round(sum(out["replica_frames"].values()) / max(1, batches), 1)
    cluster.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--model", help="model file (default: the bundled demo model)")
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--skip-run", action="store_true", help="only the cluster items")
    parser.add_argument("--run-threads", type=int, default=1, help="torch threads of the `run` pipeline (default 1)")
    parser.add_argument("--rounds", type=int, default=1, help="cluster items repeated, replica counts alternated")
    parser.add_argument("--paced-off", action="store_true", help="cluster items unpaced only (the throughput)")
    parser.add_argument(
        "--no-early-exit", action="store_true", help="every window uses k frames (the pool does the most work)"
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    log = lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True)  # noqa: E731
    result: dict = {
        "streams": args.streams,
        "warmup_s": args.warmup,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "load_avg_start": [round(x, 1) for x in os.getloadavg()],
    }
    result["run"] = (
        {}
        if args.skip_run
        else {
            k: asyncio.run(
                _run_once(args.streams, k == "paced", args.warmup, args.seconds, args.model, args.run_threads)
            )
            for k in ("paced", "unpaced")
        }
    )
    log(f"run: {json.dumps(result['run'])}")
    import ray

    from streamer.cluster import connect
    from streamer.cluster.serve import NAMESPACE

    if not args.replicas:
        print(json.dumps(result, indent=1))
        return
    connect.start_private(num_cpus=max(2, os.cpu_count() or 1) + 2, namespace=NAMESPACE, log_to_driver=False)
    order = [int(x) for x in args.replicas.split(",") if x]
    kinds = ("unpaced",) if args.paced_off else ("paced", "unpaced")
    rounds: list[dict[int, dict]] = []
    for i in range(args.rounds):
        items: dict[int, dict] = {}
        for r in order if i % 2 == 0 else order[::-1]:  # 1, 2, 2, 1, 1, 2, ...
            items[r] = {
                k: bench_cluster(
                    args.streams, k == "paced", args.warmup, args.seconds, args.model, r, not args.no_early_exit
                )
                for k in kinds
            }
            log(f"round {i + 1}, {r} replica(s): {json.dumps(items[r])}")
        rounds.append(items)
    for r in order:
        result[f"cluster_{r}"] = rounds[0][r]
    result["rounds"] = [{f"cluster_{r}": items[r] for r in order} for items in rounds]
    if {1, 2} <= set(order):
        ratios = sorted(items[2]["unpaced"]["fps_total"] / items[1]["unpaced"]["fps_total"] for items in rounds)
        result["replicas_2_over_1"] = {
            "median": round(statistics.median(ratios), 2),
            "min": round(ratios[0], 2),
            "max": round(ratios[-1], 2),
            "rounds": len(ratios),
        }
    ray.shutdown()
    from sampler.model import SampledClassifier
    from streamer.app import demo_model_path

    cfg = SampledClassifier.load(args.model or demo_model_path()).config
    frame = cfg.input_size**2
    result["wire"] = {
        "frame_bytes": frame,
        "k_over_T": cfg.k / cfg.num_frames,
        "full_sequence_per_stream_s": 30 * frame,
        "das_per_stream_s": round(30 * frame * result[f"cluster_{order[0]}"][kinds[0]]["forwarded_fraction"]),
    }
    result["load_avg_end"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
