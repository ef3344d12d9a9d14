"""The streaming benchmark suite (issue "Performance"): prints one JSON object and writes a
markdown summary. A thin wrapper over ``das-stream bench`` (``streamer/bench/``) that also runs
the ONNX engine beside eager torch, so both land in one report from one run.

    .venv/bin/python benchmarks/bench_streaming.py [--quick] [--engines torch,onnx] [--device cpu]
        [--model PATH] [--threads N] [--markdown docs/performance-cpu.md] [--json out.json]

Each engine's run compares DAS and the full sequence inside the same process (see
streamer/bench/), so the ratios hold on a noisy machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from streamer.bench import BenchSettings, make_video, run_bench, to_json


def markdown(results: dict[str, dict], command: str) -> str:
    """A summary table per engine, the targets beside the figures."""
    lines = [f"Command: `{command}`", ""]
    any_run = next(iter(results.values()))
    m = any_run["machine"]
    lines += [
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
        f"GPU: {m['gpu'] or 'none'}; device {any_run['device']}.",
        "",
    ]
    lines += ["| item | target | " + " | ".join(results) + " |", "|---|---|" + "---|" * len(results)]

    def row(label: str, target: str, get) -> None:
        cells = []
        for r in results.values():
            try:
                cells.append(str(get(r)))
            except (KeyError, TypeError):
                cells.append("n/a")
        lines.append(f"| {label} | {target} | " + " | ".join(cells) + " |")

    row("1. compute per window, DAS 0.25 / full", "", lambda r: r["compute"]["ratio_vs_full"]["das@0.25"])
    row("1. compute per window, DAS 0.5 / full", "<= 0.55", lambda r: r["compute_ratio"])
    row("1. compute per window, DAS 0.75 / full", "", lambda r: r["compute"]["ratio_vs_full"]["das@0.75"])
    row("1. full-sequence window (ms)", "", lambda r: r["compute"]["window_ms"]["full"])
    row("2. DAS sampler / full classifier", "<= 0.05", lambda r: r["sampler_overhead"])
    row("2. DAS sampler per window (ms)", "", lambda r: r["compute"]["sampler_ms"])
    row("3. throughput DAS 0.5 (input fps)", ">= 300", lambda r: r["throughput_fps"])
    row("3. throughput full (input fps)", "", lambda r: r["throughput"]["runs"]["full"]["fps_in"])
    row("3. throughput ratio DAS / full", ">= 1.6", lambda r: r["throughput_ratio"])
    row(
        "4. latency capture -> published p50/p95/p99 (ms)",
        "",
        lambda r: "/".join(str(r["latency"]["latency_ms"][p]) for p in ("p50", "p95", "p99")),
    )
    row(
        "4. latency window close -> published p50/p95/p99 (ms)",
        "p99 <= 50",
        lambda r: "/".join(str(r["latency"]["latency_close_ms"][p]) for p in ("p50", "p95", "p99")),
    )
    row(
        "4. of which engine stages p50: sampler / embed / head (ms)",
        "",
        lambda r: " / ".join(str(r["latency"]["stages_ms"][k]["p50"]) for k in ("sampler", "embed", "head")),
    )
    row("4. frames dropped at 30 fps", "0", lambda r: r["latency"]["dropped"])
    row(
        "5. frames embedded per input frame, stride T/2: cache / recompute",
        "",
        lambda r: (
            f"{r['overlap']['cache']['frames_embedded_per_frame']} / {r['overlap']['recompute']['frames_embedded_per_frame']}"
        ),
    )
    row("5. time saved by the cache", "", lambda r: r["overlap"]["time_saved"])
    row("6. peak RSS (MB) over 100,000 frames", "", lambda r: r["memory"]["peak_rss_mb"])
    row("6. RSS growth after warm-up (MB)", "<= 50", lambda r: r["memory"]["growth_after_warmup_mb"])
    row(
        "7. 4 streams at 30 fps: worst p99 latency (ms)",
        "",
        lambda r: max(v["latency_p99_ms"] for v in r["streams"]["per_stream"].values()),
    )
    row("7. 4 streams at 30 fps: frames dropped", "0", lambda r: r["streams"]["dropped_total"])
    row(
        "8. capacity: 30 fps streams with 0 drops and p99 close <= 50 ms, DAS 0.5 / full",
        "",
        lambda r: f"{r['capacity_streams']} / {r['capacity_streams_full']}",
    )
    row(
        "8. engine warm-up (s), DAS 0.5 / full",
        "",
        lambda r: " / ".join(str(run["warm_up_s"]) for run in r["capacity"]["runs"].values()),
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--engines", default="torch,onnx", help="comma list of auto, torch, torch-cudagraph, onnx")
    p.add_argument("--device", default="auto")
    p.add_argument("--model")
    p.add_argument("--threads", type=int)
    p.add_argument("--only", default="")
    p.add_argument("--feature-size", type=int, default=56)
    p.add_argument("--markdown", help="write the summary table here")
    p.add_argument("--json", help="write the full JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    only = tuple(x for x in args.only.split(",") if x)
    results = {}
    t0 = time.perf_counter()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        video = None
        if not only or {"throughput", "latency"} & set(only):
            video = str(make_video(Path(tmp) / "bench.mp4", frames=600 if args.quick else 1800))
        for engine in args.engines.split(","):
            print(f"[bench] engine {engine}", file=sys.stderr, flush=True)
            s = BenchSettings(
                quick=args.quick,
                model=args.model,
                device=args.device,
                engine=engine,
                video=video,
                only=only,
                feature_size=args.feature_size,
            )
            results[engine] = run_bench(s, log=lambda m: print(f"[bench]   {m}", file=sys.stderr, flush=True))
    command = "python " + " ".join(["benchmarks/bench_streaming.py", *(argv if argv is not None else sys.argv[1:])])
    out = {"wall_seconds": round(time.perf_counter() - t0, 1), "command": command, "results": results}
    text = to_json(out)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
