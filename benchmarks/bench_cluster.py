"""The cluster path against `das-stream run` on this machine; prints one JSON object.

    PYTHONPATH=$PWD python benchmarks/bench_cluster.py --streams 3 --seconds 20 --frames 320

Items (the bundled demo model unless --model: T = 16, k = 8, 112 px; synthetic sources, no MQTT
in either path so that only the pipeline differs):

- ``run``: the streams at 30 fps through the single-process pipeline for --seconds: latency
  (capture -> published) p50/p99, drops, CPU seconds per frame (this process); then the same
  streams unpaced (--frames each): aggregate frames per second.
- ``cluster_<R>``, R = 1 and 2 replicas of 1 CPU each, the same two runs through a local Ray
  (stream actors of 0.25 CPU): the same figures, CPU per frame summed over every process the
  local Ray instance runs (raylet, GCS, Serve controller, actors, replicas); the bytes each
  stream sent to the pool and got back per second.
- ``wire``: bytes per stream per second of frames at the model's input size, with DAS (the
  frames the sampler forwarded) and with the full sequence (every frame), from the paced runs.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def specs(n: int, *, frames: int | None) -> list[str]:
    tail = f"&frames={frames}" if frames else ""
    return [f"synthetic:?fps=30&seed={i}{tail}" for i in range(n)]


def tree_cpu(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def summarise(finals: list[dict], wall: float, cpu: float) -> dict:
    frames = sum(f["frames_in"] for f in finals)
    lat = [f["latency_ms"] for f in finals]
    out = {
        "frames": frames, "wall_s": round(wall, 2), "fps_total": round(frames / wall, 1),
        "dropped": sum(f["frames_dropped"] for f in finals),
        "latency_p50_ms": round(max(x["p50"] for x in lat), 1), "latency_p99_ms": round(max(x["p99"] for x in lat), 1),
        "cpu_ms_per_frame": round(1000.0 * cpu / max(1, frames), 2),
        "fps_in_per_stream": [f["fps_in"] for f in finals],
        "forwarded_fraction": round(sum(f["frames_forwarded"] for f in finals) / max(1, frames), 3),
    }
    wire = [f["extra"].get("wire") for f in finals if f["extra"].get("wire")]
    if wire:
        per = wall * len(finals)
        out["bytes_to_pool_per_stream_s"] = round(sum(w["bytes_to_pool"] for w in wire) / per)
        out["bytes_from_pool_per_stream_s"] = round(sum(w["bytes_from_pool"] for w in wire) / per)
        out["requests"] = sum(w["requests"] for w in wire)
    return out


def bench_run(n: int, seconds: float, frames: int, model: str | None) -> dict:
    from streamer import app
    from streamer.config import RunConfig

    out = {}
    me = psutil.Process()
    for label, kw in (("paced", dict(duration=seconds)), ("unpaced", dict(pacing=False))):
        cfg = RunConfig(sources=tuple(specs(n, frames=None if label == "paced" else frames)), model=model,
                        console=False, threads=1, log_level="warning", **kw)
        pipe = app.build_pipeline(cfg)
        cpu0, t0 = tree_cpu(me), time.monotonic()
        summary = asyncio.run(pipe.run())
        wall, cpu = time.monotonic() - t0, tree_cpu(me) - cpu0
        out[label] = summarise([s.to_dict() for s in summary.final.values()], wall, cpu)
    return out


def bench_cluster(n: int, seconds: float, frames: int, model: str | None, replicas: int) -> dict:
    import ray
    from ray import serve

    from streamer.cluster.config import ClusterConfig
    from streamer.cluster.driver import Cluster

    out = {}
    me = psutil.Process()
    for label in ("paced", "unpaced"):
        cfg = ClusterConfig(sources=tuple(specs(n, frames=None if label == "paced" else frames)), model=model,
                            pacing=label == "paced", replicas=replicas, replica_cpus=1.0, stream_cpus=0.25,
                            log_level="warning")
        cluster = Cluster(cfg, reuse_pool=True)
        cluster.start()
        # Wait until every stream actor is up (process start is not part of the figures).
        while len(cluster.snapshot()["streams"]) < n:
            time.sleep(0.2)
        cpu0, t0 = tree_cpu(me), time.monotonic()
        if label == "paced":
            time.sleep(seconds)
            cluster.stop()
        cluster.wait()
        wall, cpu = time.monotonic() - t0, tree_cpu(me) - cpu0
        snap = cluster.snapshot()
        out[label] = summarise(list(cluster.final.values()), wall, cpu)
        out[label]["replica_frames"] = {r: f["frames"] for r, f in snap["replicas"].items()}
        cluster.close()
    serve.delete("das-stream")
    ray.kill(ray.get_actor("das-stream-state", namespace="das-stream"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--frames", type=int, default=320, help="frames per stream of the unpaced runs")
    parser.add_argument("--model", help="model file (default: the bundled demo model)")
    parser.add_argument("--replicas", default="1,2")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    result: dict = {"streams": args.streams, "seconds": args.seconds, "cpus": os.cpu_count(),
                    "load_avg_start": os.getloadavg()}
    result["run"] = bench_run(args.streams, args.seconds, args.frames, args.model)
    print(f"[bench] run: {json.dumps(result['run'])}", file=sys.stderr, flush=True)
    import ray

    from streamer.cluster.serve import NAMESPACE

    ray.init(num_cpus=max(2, os.cpu_count() or 1) + 2, include_dashboard=False, namespace=NAMESPACE,
             logging_level="WARNING", log_to_driver=False)
    for r in (int(x) for x in args.replicas.split(",")):
        result[f"cluster_{r}"] = bench_cluster(args.streams, args.seconds, args.frames, args.model, r)
        print(f"[bench] cluster_{r}: {json.dumps(result[f'cluster_{r}'])}", file=sys.stderr, flush=True)
    ray.shutdown()
    from sampler.model import SampledClassifier
    from streamer.app import demo_model_path

    cfg = SampledClassifier.load(args.model or demo_model_path()).config
    frame = cfg.input_size ** 2
    result["wire"] = {"frame_bytes": frame, "full_sequence_per_stream_s": 30 * frame,
                      "das_per_stream_s": round(30 * frame * result["run"]["paced"]["forwarded_fraction"]),
                      "k_over_T": cfg.k / cfg.num_frames}
    result["load_avg_end"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
