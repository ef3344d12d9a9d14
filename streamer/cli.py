"""The `das-stream` command line: the only place that parses arguments.

Subcommands: run, subscribe, train, evaluate, compare, bench. Errors a user can cause are printed
as one line (``das-stream: error: ...``) with a non-zero exit status; programming errors stay
tracebacks.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sampler.errors import SamplerError
from sinks.errors import SinkError
from sources.errors import SourceError

# The user-caused errors (see docs/design.md); ConfigError, ModelFileError and DataError are SamplerErrors.
USER_ERRORS: tuple[type[BaseException], ...] = (SamplerError, SourceError, SinkError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="das-stream",
        description="Real-time adaptive frame selection for ultrasound streams (DAS).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run_commands(sub)
    _add_training_commands(sub)
    return parser


# --- streaming commands (run, subscribe, bench) ---
def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run", help="stream frames through the sampler and classifier (default command)",
        description="Attach to a stream, pick k frames per window with the sampler, classify them, publish "
        "predictions and stats. With no arguments: the synthetic source through the bundled demo model, "
        "printed to the console until Ctrl-C.",
    )
    run.add_argument("--config", help="YAML file with run settings (flags override it); see configs/")
    run.add_argument("--source", action="append", dest="sources", metavar="SPEC",
                     help="video:PATH | probe:DEVICE|URL | zmq+sub://HOST:PORT | zmq+pull://HOST:PORT | synthetic: "
                     "(repeat for several streams; default synthetic:)")
    run.add_argument("--model", help="model file from `das-stream train` (default: bundled demo model)")
    run.add_argument("--window", type=int, help="window length T (must match the model; default: the model's)")
    run.add_argument("--stride", type=int, help="frames between window starts (default: the window length)")
    run.add_argument("--speed", type=float, help="replay speed factor for video: sources (default 1.0)")
    run.add_argument("--no-pacing", dest="pacing", action="store_const", const=False,
                     help="replay files as fast as possible instead of at their frame rate")
    run.add_argument("--loop", action="store_const", const=True, help="replay video: sources forever")
    run.add_argument("--overload", choices=["auto", "drop_oldest", "block"],
                     help="when the classifier lags: drop the oldest frames (counted) or block the source "
                     "(default auto: block for --no-pacing replays, drop_oldest otherwise)")
    run.add_argument("--frame-queue", type=int, help="frames buffered per stream (default 256)")
    run.add_argument("--max-batch-windows", type=int, help="most windows per classifier call (default 8)")
    run.add_argument("--device", help="auto | cpu | cuda[:N] (default auto)")
    run.add_argument("--engine", choices=["torch", "onnx"], help="classifier backbone engine (default torch)")
    run.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    run.add_argument("--mqtt", metavar="URL", help="publish to mqtt://[user:pass@]HOST:PORT or mqtts://...")
    run.add_argument("--topic-prefix", help="MQTT topic prefix (default das): PREFIX/STREAM/prediction|stats")
    run.add_argument("--qos", type=int, choices=[0, 1, 2], help="MQTT QoS (default 1)")
    run.add_argument("--client-id", help="MQTT client id (default: fixed per host, for a persistent session)")
    run.add_argument("--mqtt-buffer", type=int, help="messages kept while the broker is away (default 10000)")
    run.add_argument("--tls-ca", help="CA file for mqtts://")
    run.add_argument("--tls-cert", help="client certificate for mqtts://")
    run.add_argument("--tls-key", help="client key for mqtts://")
    run.add_argument("--tls-insecure", action="store_const", const=True, help="do not check the broker's hostname")
    run.add_argument("--jsonl", metavar="PATH", help="also append every message to this JSON-lines file")
    run.add_argument("--quiet", dest="console", action="store_const", const=False, help="no console output")
    run.add_argument("--stats-interval", type=float, help="seconds between stats messages (default 5)")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.set_defaults(handler=_cmd_run)

    subscribe = sub.add_parser("subscribe", help="print predictions and stats arriving over MQTT")
    subscribe.add_argument("--mqtt", metavar="URL", required=True, help="mqtt://[user:pass@]HOST:PORT or mqtts://...")
    subscribe.add_argument("--topic-prefix", default="das", help="topic prefix (default das)")
    subscribe.add_argument("--raw", action="store_true", help="print the JSON payloads as they are, one per line")
    subscribe.add_argument("--duration", type=float, help="stop after this many seconds")
    subscribe.add_argument("--count", type=int, help="stop after this many messages")
    subscribe.add_argument("--tls-ca", help="CA file for mqtts://")
    subscribe.set_defaults(handler=_cmd_subscribe)

    bench = sub.add_parser(
        "bench", help="measure compute saved, sampler overhead, throughput and latency on this machine",
        description="Runs the benchmark suite (see docs/performance.md) and prints one JSON object. Keys: "
        "compute_ratio, sampler_overhead, throughput_ratio, throughput_fps, latency_p99_ms, then details.",
    )
    bench.add_argument("--quick", action="store_true", help="short runs: under 5 minutes on 2 CPU cores")
    bench.add_argument("--model", help="model file to time (default: untrained T=32, 224 px DAS/full models)")
    bench.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    bench.add_argument("--engine", default="torch", choices=["torch", "onnx"], help="backbone engine")
    bench.add_argument("--video", help="video to replay for throughput/latency (default: a synthetic 640x480 clip)")
    bench.add_argument("--mqtt", metavar="URL", help="broker for throughput/latency (default: a local mosquitto if installed)")
    bench.add_argument("--only", help="comma-separated items: compute,sampler,throughput,latency,overlap,memory,streams")
    bench.add_argument("--threads", type=int, help="torch intra-op threads")
    bench.add_argument("--feature-size", type=int, default=56,
                       help="sampler feature resolution of the default models (default 56 = 224/4)")
    bench.add_argument("--out", help="also write the JSON to this file")
    bench.set_defaults(handler=_cmd_bench)


def _cmd_run(args: argparse.Namespace) -> int:
    from streamer import app
    from streamer.config import RunConfig

    overrides = {k: getattr(args, k) for k in RunConfig.keys() if hasattr(args, k)}
    cfg = RunConfig.load(args.config, overrides)
    summary = app.run(cfg)
    if summary.errors:
        print(f"das-stream: error: {summary.errors[0]}", file=sys.stderr)
        return 1
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import logging

    import torch

    from streamer.bench import ITEMS, BenchSettings, run_bench, to_json

    only = tuple(x.strip() for x in args.only.split(",")) if args.only else ()
    unknown = [x for x in only if x not in ITEMS]
    if unknown:
        from sampler.errors import ConfigError
        raise ConfigError(f"unknown bench item {unknown[0]!r}; choose from {', '.join(ITEMS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    settings = BenchSettings(quick=args.quick, model=args.model, device=args.device, engine=args.engine,
                             video=args.video, mqtt=args.mqtt, only=only, feature_size=args.feature_size)
    result = run_bench(settings, log=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
    text = to_json(result)
    print(text)
    if args.out:
        from pathlib import Path
        Path(args.out).write_text(text + "\n")
    return 0


def _cmd_subscribe(args: argparse.Namespace) -> int:
    import asyncio

    from sinks.mqtt import MqttSettings
    from sinks.subscribe import subscribe

    settings = MqttSettings.from_url(args.mqtt, topic_prefix=args.topic_prefix, tls_ca=args.tls_ca)
    try:
        summary = asyncio.run(subscribe(settings, duration=args.duration, max_messages=args.count, raw=args.raw))
    except KeyboardInterrupt:
        return 0
    print(f"das-stream subscribe: {summary.predictions} predictions, {summary.stats} stats, "
          f"{summary.duplicates} duplicates, {summary.malformed} malformed", file=sys.stderr)
    return 0
# --- end streaming commands ---


# --- training commands (train, evaluate, compare) ---
_TRAIN_FLAGS = {"method": "model.method", "keep": "model.keep", "seed": "train.seed", "epochs": "train.epochs",
                "device": "train.device", "methods": "grid.methods", "seeds": "grid.seeds", "keeps": "grid.keeps",
                "folds": "data.folds"}


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    settings = argparse.ArgumentParser(add_help=False)
    settings.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                          help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")
    settings.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the config's (auto)")

    train = sub.add_parser("train", parents=[settings], help="train one method on one dataset",
                           description="Train one sampler + classifier; writes model.pt, result.json and figures.")
    train.add_argument("--config", required=True, help="experiment YAML, e.g. configs/train_adrenal28.yaml")
    train.add_argument("--method", help="full | random | uniform | dps | adps | das")
    train.add_argument("--keep", type=float, help="keep ratio k/T (default 0.5)")
    train.add_argument("--seed", type=int, help="random seed (default 0)")
    train.add_argument("--epochs", type=int, help="maximum epochs (early stopping may end sooner)")
    train.add_argument("--out", help="run folder (default: train.out/<name>/<method>-keep<k>-seed<s>)")
    train.set_defaults(handler=_cmd_train)

    evaluate = sub.add_parser("evaluate", parents=[settings], help="score a trained model on one split",
                              description="Score a model on val or test; writes eval-<split>.json, predictions and "
                              "a figure of the frames it picks.")
    evaluate.add_argument("--model", required=True, help="model file written by `das-stream train`")
    evaluate.add_argument("--config", help="experiment YAML (default: the config.yaml saved next to the model)")
    evaluate.add_argument("--split", choices=["val", "test"], default="test", help="default test")
    evaluate.add_argument("--out", help="output folder (default: the model's folder)")
    evaluate.set_defaults(handler=_cmd_evaluate)

    compare = sub.add_parser("compare", parents=[settings], help="run methods x seeds on one dataset, write the table",
                             description="Train every method x keep x seed of the grid and write <name>.csv, "
                             "<name>.md and <name>-auc.png.")
    compare.add_argument("--config", required=True, help="experiment YAML, e.g. configs/train_adrenal28.yaml")
    compare.add_argument("--methods", help="comma list (default: the config's grid.methods)")
    compare.add_argument("--seeds", help="comma list, e.g. 0,1,2")
    compare.add_argument("--keeps", help="comma list of keep ratios, e.g. 0.25,0.5,0.75")
    compare.add_argument("--epochs", type=int, help="maximum epochs per run")
    compare.add_argument("--out", help="output folder (default: train.out/<name>)")
    compare.add_argument("--resume", action="store_true", help="skip runs whose result.json already exists")
    compare.add_argument("--folds", type=int, help="K-fold cross-validation with paired differences (data.folds)")
    compare.set_defaults(handler=_cmd_compare)


def _training_overrides(args: argparse.Namespace) -> list[str]:
    """The flags that set config values, as ``section.key=value`` overrides (then --set ones)."""
    flags = [f"{key}={getattr(args, name)}" for name, key in _TRAIN_FLAGS.items() if getattr(args, name, None) is not None]
    return [*flags, *args.overrides]


def _cmd_train(args: argparse.Namespace) -> int:
    from sampler.training.commands import train
    from sampler.training.config import load_config

    train(load_config(args.config, overrides=_training_overrides(args)), run_dir=args.out)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from sampler.training.commands import evaluate_model, run_config_path
    from sampler.training.config import load_config

    config = load_config(args.config or run_config_path(args.model), overrides=_training_overrides(args))
    report = evaluate_model(args.model, config=config, split=args.split, out=args.out)
    print(f"{report.split}: auc {report.auc:.4f} balanced_acc {report.acc:.2f}% loss {report.loss:.4f} "
          f"clips {report.clips} unique {report.unique_frames:.2f}/{report.k}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from sampler.training.commands import compare
    from sampler.training.config import load_config
    from sampler.training.report import markdown_table

    rows = compare(load_config(args.config, overrides=_training_overrides(args)), out=args.out, resume=args.resume)
    print(markdown_table(rows), end="")
    return 0
# --- end training commands ---


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except USER_ERRORS as exc:
        print(f"das-stream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
