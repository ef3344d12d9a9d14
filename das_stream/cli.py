"""The `das-stream` command line: the only place that parses arguments.

Subcommands: run, subscribe, bench, train, info, export, evaluate, compare, cluster. Errors a user
can cause are printed as one line (``das-stream: error: ...``) with a non-zero exit status;
programming errors stay tracebacks.

The parser is built lazily: ``das-stream --help`` lists the commands from :data:`COMMANDS` alone,
and only the chosen subcommand's arguments are added (their help texts import the settings they
show), so ``--help``, ``subscribe``, ``info PACKAGE`` and ``cluster status`` import no torch,
OpenCV or PyAV. A command that needs an optional part of das-stream that is not installed says
which extra to install, in one line (:func:`need`).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

# Nothing heavy (torch, OpenCV, PyAV) is imported at module level: a Ctrl-C during the seconds
# those imports take then lands inside main(), which exits 130 without a traceback.

# The extras of pyproject.toml, by what a command needs: module -> extra.
EXTRAS = {"torch": "torch", "sklearn": "train", "matplotlib": "train", "onnx": "train", "ray": "cluster"}


def need(what: str, *modules: str, extra: str | None = None) -> None:
    """Raise a one-line ConfigError naming the extra to install (``extra``, else the module's own)
    when a module ``what`` needs is missing."""
    import importlib.util

    from core.errors import ConfigError

    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # a finder that refuses it
            found = False
        if not found:
            wanted = extra or EXTRAS.get(module, "dev")
            raise ConfigError(f"{what} needs {module}, which this install lacks: pip install 'das-stream[{wanted}]'")


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an error a user can cause (:class:`core.errors.DasStreamError`)."""
    from core.errors import DasStreamError

    return isinstance(exc, DasStreamError)


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds > 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; the arguments of ``commands`` only (None: every command's)."""
    parser = argparse.ArgumentParser(
        prog="das-stream",
        description="Real-time adaptive frame selection for ultrasound streams (DAS).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add, options) in COMMANDS.items():
        command = sub.add_parser(name, **options)
        if commands is None or name in commands:
            add(command)
    return parser


# --- streaming commands (run, subscribe, bench) ---
def _run_choices(key: str) -> list:
    """The values a RunConfig key takes, for a flag's choices."""
    from core.settings import choices_of
    from streamer.config import RunConfig

    return list(choices_of(RunConfig, key))


def _add_run(run: argparse.ArgumentParser) -> None:
    from core import bounds
    from core.settings import DEVICE_FORMS
    from sources.spec import spec_usage
    from streamer.config import RunConfig

    d = RunConfig.defaults()  # help text shows the defaults from where they are defined
    choices = _run_choices
    run.add_argument("--config", help="YAML file with run settings (flags override it); see configs/")
    run.add_argument(
        "--source",
        action="append",
        dest="sources",
        metavar="SPEC",
        help=f"{spec_usage()} (repeat for several streams; default {' '.join(d['sources'])})",
    )
    run.add_argument(
        "--model",
        help="model package from `das-stream export` (runs without torch) or model file from `das-stream train` "
        "(default: the bundled demo, its package unless a torch engine or CUDA device is asked for)",
    )
    run.add_argument("--window", type=int, help="window length T (must match the model; default: the model's)")
    run.add_argument("--stride", type=int, help="frames between window starts (default: the window length)")
    run.add_argument(
        "--speed", type=float, help=f"replay speed factor for video: and dicom: sources (default {d['speed']})"
    )
    run.add_argument(
        "--no-pacing",
        dest="pacing",
        action="store_const",
        const=False,
        help="replay files as fast as possible instead of at their frame rate",
    )
    run.add_argument("--loop", action="store_const", const=True, help="replay video: and dicom: sources forever")
    run.add_argument(
        "--overload",
        choices=choices("overload"),
        help="when the classifier lags: shrink the frames used per window first, then drop the oldest "
        "(counted); drop the oldest at once; or block the source "
        "(default auto: block for --no-pacing replays, shrink otherwise)",
    )
    run.add_argument(
        "--budget",
        type=bounds.flag("budget"),
        metavar="FRAMES_PER_S",
        help="backbone frames per second for the whole process; windows stop adding frames when it runs out",
    )
    run.add_argument(
        "--no-early-exit",
        dest="early_exit",
        action="store_const",
        const=False,
        help="every window embeds k_max frames even when the model's exit rule says its prediction is settled",
    )
    run.add_argument("--frame-queue", type=int, help=f"frames buffered per stream (default {d['frame_queue']})")
    run.add_argument(
        "--max-batch-windows", type=int, help=f"most windows per classifier call (default {d['max_batch_windows']})"
    )
    run.add_argument("--device", help=f"{DEVICE_FORMS} (default {d['device']})")
    run.add_argument(
        "--engine",
        choices=choices("engine"),
        help=f"backbone engine (default {d['engine']}): auto = ONNX Runtime for a package; for a torch model "
        "CUDA graphs on a GPU, else ONNX Runtime; torch (eager), torch-cudagraph, onnx",
    )
    run.add_argument("--threads", type=int, help="intra-op threads of ONNX Runtime (and torch) (default: theirs)")
    run.add_argument("--mqtt", metavar="URL", help="publish to mqtt://[user:pass@]HOST:PORT or mqtts://...")
    run.add_argument(
        "--topic-prefix", help=f"MQTT topic prefix (default {d['topic_prefix']}): PREFIX/STREAM/prediction|stats"
    )
    run.add_argument("--qos", type=int, choices=choices("qos"), help=f"MQTT QoS (default {d['qos']})")
    run.add_argument("--client-id", help="MQTT client id (default: fixed per host, for a persistent session)")
    run.add_argument(
        "--mqtt-buffer", type=int, help=f"messages kept while the broker is away (default {d['mqtt_buffer']})"
    )
    run.add_argument("--tls-ca", help="CA file for mqtts://")
    run.add_argument("--tls-cert", help="client certificate for mqtts://")
    run.add_argument("--tls-key", help="client key for mqtts://")
    run.add_argument("--tls-insecure", action="store_const", const=True, help="do not check the broker's hostname")
    run.add_argument("--jsonl", metavar="PATH", help="also append every message to this JSON-lines file")
    run.add_argument("--quiet", dest="console", action="store_const", const=False, help="no console output")
    run.add_argument(
        "--stats-interval", type=float, help=f"seconds between stats messages (default {d['stats_interval']:g})"
    )
    run.add_argument("--duration", type=_seconds, help="stop after this many seconds")
    run.add_argument(
        "--gap",
        type=float,
        help="seconds without a frame that close a stream's open window early "
        f"and mark the next one gap_before (default {d['gap']:g}; 0: never)",
    )
    run.add_argument("--log-level", choices=choices("log_level"), help=f"default {d['log_level']}")
    run.add_argument(
        "--web",
        nargs="?",
        const="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="serve a live view of the run in the browser (default off; alone: 127.0.0.1:8080)",
    )
    run.add_argument(
        "--metrics",
        nargs="?",
        const="127.0.0.1:9108",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and /healthz (default off; alone: 127.0.0.1:9108)",
    )
    run.set_defaults(handler=_cmd_run)


def _add_subscribe(subscribe: argparse.ArgumentParser) -> None:
    from sinks.mqtt import MqttSettings

    subscribe.add_argument("--mqtt", metavar="URL", required=True, help="mqtt://[user:pass@]HOST:PORT or mqtts://...")
    subscribe.add_argument(
        "--topic-prefix", default=MqttSettings.topic_prefix, help="topic prefix (default %(default)s)"
    )
    subscribe.add_argument("--raw", action="store_true", help="print the JSON payloads as they are, one per line")
    subscribe.add_argument("--duration", type=_seconds, help="stop after this many seconds")
    subscribe.add_argument("--count", type=_positive_int, help="stop after this many messages")
    subscribe.add_argument("--tls-ca", help="CA file for mqtts://")
    subscribe.add_argument(
        "--client-id",
        help="MQTT client id: keeps a persistent session under this id across "
        "restarts of subscribe (default: an id of this process, its session dropped at exit)",
    )
    subscribe.set_defaults(handler=_cmd_subscribe)


def _add_bench(bench: argparse.ArgumentParser) -> None:
    from core.bounds import flag

    choices = _run_choices
    bench.add_argument("--quick", action="store_true", help="short runs: under 5 minutes on 2 CPU cores")
    bench.add_argument(
        "--model",
        help="model package or model file to time (default: untrained T=32, 224 px DAS/full models, which need torch)",
    )
    bench.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    bench.add_argument(
        "--engine", default="auto", choices=choices("engine"), help="backbone engine (default auto, as `run`)"
    )
    bench.add_argument("--video", help="video to replay for throughput/latency (default: a synthetic 640x480 clip)")
    bench.add_argument(
        "--mqtt", metavar="URL", help="broker for throughput/latency (default: a local mosquitto if installed)"
    )
    bench.add_argument(
        "--only", help="comma-separated items: compute,sampler,throughput,latency,overlap,memory,streams,capacity"
    )
    bench.add_argument("--streams", type=int, help="capacity item: run this one number of 30 fps streams, no sweep")
    bench.add_argument("--threads", type=flag("threads"), help="intra-op threads of ONNX Runtime (and torch)")
    bench.add_argument(
        "--budget",
        type=flag("budget"),
        default=60.0,
        metavar="FRAMES_PER_S",
        help="latency/capacity: the frame budget of the early-exit-with-budget variant (default 60)",
    )
    bench.add_argument(
        "--repeats", type=int, default=3, help="latency: the variants alternated this many times (default 3)"
    )
    bench.add_argument(
        "--feature-size",
        type=int,
        default=56,
        help="sampler feature resolution of the default models (default 56 = 224/4)",
    )
    bench.add_argument("--out", help="also write the JSON to this file")
    bench.set_defaults(handler=_cmd_bench)


def _cmd_run(args: argparse.Namespace) -> int:
    from streamer import app
    from streamer.config import RunConfig

    overrides = {k: getattr(args, k) for k in RunConfig.keys() if hasattr(args, k)}
    cfg = RunConfig.load(args.config, overrides)
    summary = app.run(cfg)
    if summary.errors:
        for error in summary.errors:  # a source error, undelivered predictions: one line each
            print(f"das-stream: error: {error}", file=sys.stderr)
        return 1
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import logging

    if not args.model:
        need("das-stream bench without --model (it builds untrained torch models)", "torch")
    from streamer.bench import ITEMS, BenchSettings, run_bench, to_json

    only = tuple(x.strip() for x in args.only.split(",")) if args.only else ()
    unknown = [x for x in only if x not in ITEMS]
    if unknown:
        from core.errors import ConfigError

        raise ConfigError(f"unknown bench item {unknown[0]!r}; choose from {', '.join(ITEMS)}")
    logging.basicConfig(level=logging.WARNING)
    settings = BenchSettings(
        quick=args.quick,
        model=args.model,
        device=args.device,
        engine=args.engine,
        video=args.video,
        mqtt=args.mqtt,
        only=only,
        feature_size=args.feature_size,
        streams=args.streams,
        threads=args.threads,
        budget=args.budget,
        repeats=args.repeats,
    )
    result = run_bench(settings, log=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
    text = to_json(result)
    print(text)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(text + "\n")
    return 0


def _cmd_subscribe(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from sinks.mqtt import MqttSettings, unique_client_id
    from sinks.subscribe import subscribe

    settings = MqttSettings.from_url(
        args.mqtt,
        topic_prefix=args.topic_prefix,
        tls_ca=args.tls_ca,
        client_id=args.client_id or unique_client_id("sub"),
    )

    async def until_signal():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await subscribe(
            settings,
            duration=args.duration,
            max_messages=args.count,
            raw=args.raw,
            stop=stop,
            forget_session=args.client_id is None,
        )

    summary = asyncio.run(until_signal())
    print(
        f"das-stream subscribe: {summary.predictions} predictions, {summary.stats} stats, "
        f"{summary.duplicates} duplicates, {summary.malformed} malformed, "
        f"{summary.missing} windows missing",
        file=sys.stderr,
    )
    return 0


# --- end streaming commands ---


# --- training commands (train, evaluate, compare) ---
_TRAIN_FLAGS = {
    "method": "model.method",
    "keep": "model.keep",
    "seed": "train.seed",
    "epochs": "train.epochs",
    "device": "train.device",
    "methods": "grid.methods",
    "seeds": "grid.seeds",
    "keeps": "grid.keeps",
    "folds": "data.folds",
}


def _training_settings(settings: argparse.ArgumentParser) -> None:
    """The flags train, evaluate and compare share."""
    from core.settings import DEVICE_FORMS
    from training.config import TrainSettings

    settings.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)",
    )
    settings.add_argument("--device", help=f"{DEVICE_FORMS} (default: the config's, else {TrainSettings.device})")


def _add_train(train: argparse.ArgumentParser) -> None:
    need("das-stream train", "torch", "sklearn", "matplotlib", extra="train")
    from training.config import METHODS, ModelSettings, TrainSettings

    _training_settings(train)
    train.add_argument("--config", required=True, help="experiment YAML, e.g. configs/train_adrenal28.yaml")
    train.add_argument("--method", help=" | ".join(METHODS))
    train.add_argument("--keep", type=float, help=f"keep ratio k/T (default {ModelSettings.keep})")
    train.add_argument("--seed", type=int, help=f"random seed (default {TrainSettings.seed})")
    train.add_argument("--epochs", type=int, help="maximum epochs (early stopping may end sooner)")
    train.add_argument("--out", help="run folder (default: train.out/<name>/<method>-keep<k>-seed<s>)")
    train.add_argument("--overwrite", action="store_true", help="replace the run already in a non-empty --out")
    train.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its last epoch checkpoint"
    )
    train.set_defaults(handler=_cmd_train)


def _add_info(info: argparse.ArgumentParser) -> None:
    info.add_argument("model", help="model package or model file")
    info.set_defaults(handler=_cmd_info)


def _add_export(export: argparse.ArgumentParser) -> None:
    export.add_argument("model", help="model file from `das-stream train`")
    export.add_argument("--out", required=True, metavar="PACKAGE", help="package file to write, e.g. model.dasp")
    export.add_argument(
        "--check-video",
        action="append",
        default=[],
        metavar="PATH",
        help="check the package on windows of this video, read with the model's preprocessing "
        "(repeatable; default: windows of the synthetic generator)",
    )
    export.set_defaults(handler=_cmd_export)


def _add_evaluate(evaluate: argparse.ArgumentParser) -> None:
    need("das-stream evaluate", "torch", "sklearn", "matplotlib", extra="train")
    _training_settings(evaluate)
    evaluate.add_argument("--model", required=True, help="model file written by `das-stream train`")
    evaluate.add_argument("--config", help="experiment YAML (default: the config.yaml saved next to the model)")
    evaluate.add_argument(
        "--split", choices=["val", "test"], default="test", help="which recorded split to score (default test)"
    )
    evaluate.add_argument(
        "--data",
        metavar="CSV",
        help="score every video of this CSV index (or every volume of this MedMNIST npz) instead of a recorded split",
    )
    evaluate.add_argument(
        "--allow-overlap",
        action="store_true",
        help="with --data: score it even if the model trained or validated on some of it (or on their patients)",
    )
    evaluate.add_argument(
        "--out", help="output folder, empty or new (default: a new eval-<split>-<time> folder next to the model)"
    )
    evaluate.add_argument("--overwrite", action="store_true", help="replace the evaluate outputs in a non-empty --out")
    evaluate.set_defaults(handler=_cmd_evaluate)


def _add_calibrate(calibrate: argparse.ArgumentParser) -> None:
    need("das-stream calibrate", "torch", "sklearn", "matplotlib", extra="train")
    _training_settings(calibrate)
    calibrate.add_argument("model", help="model file written by `das-stream train`")
    calibrate.add_argument("--config", help="experiment YAML (default: the config.yaml saved next to the model)")
    calibrate.add_argument(
        "--tolerance", type=float, default=0.005, help="AUC the exit may lose against k (default 0.005)"
    )
    calibrate.add_argument("--split", choices=["val", "test"], default="val", help="default val")
    calibrate.add_argument("--out", help="write the calibrated model here instead of updating MODEL")
    calibrate.set_defaults(handler=_cmd_calibrate)


def _add_compare(compare: argparse.ArgumentParser) -> None:
    need("das-stream compare", "torch", "sklearn", "matplotlib", extra="train")
    _training_settings(compare)
    compare.add_argument("--config", required=True, help="experiment YAML, e.g. configs/train_adrenal28.yaml")
    compare.add_argument("--methods", help="comma list (default: the config's grid.methods)")
    compare.add_argument("--seeds", help="comma list, e.g. 0,1,2")
    compare.add_argument("--keeps", help="comma list of keep ratios, e.g. 0.25,0.5,0.75")
    compare.add_argument("--epochs", type=int, help="maximum epochs per run")
    compare.add_argument("--out", help="output folder (default: train.out/<name>)")
    compare.add_argument(
        "--resume",
        action="store_true",
        help="skip runs whose result.json exists and continue interrupted runs from their checkpoints",
    )
    compare.add_argument("--folds", type=int, help="K-fold cross-validation with paired differences (data.folds)")
    compare.set_defaults(handler=_cmd_compare)


def _training_overrides(args: argparse.Namespace) -> list[str]:
    """The flags that set config values, as ``section.key=value`` overrides (then --set ones)."""
    flags = [
        f"{key}={getattr(args, name)}" for name, key in _TRAIN_FLAGS.items() if getattr(args, name, None) is not None
    ]
    return [*flags, *args.overrides]


def _resume_command(argv: Sequence[str], *extra: str) -> str:
    """The command line that continues an interrupted one: ``--overwrite`` dropped, ``--resume`` added."""
    import shlex

    kept = [a for a in argv if a not in ("--overwrite", "--resume")]
    return shlex.join(["das-stream", *kept, *extra, "--resume"])


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from training.checkpoint import CHECKPOINT_FILE
    from training.commands import default_run_dir, train
    from training.config import load_config
    from training.runs import log_warnings_as_lines

    log_warnings_as_lines()
    config = load_config(args.config, overrides=_training_overrides(args))
    run_dir = Path(args.out) if args.out else default_run_dir(config)
    try:
        train(config, run_dir=run_dir, overwrite=args.overwrite, resume=args.resume)
    except KeyboardInterrupt:
        if not (run_dir / CHECKPOINT_FILE).is_file():
            raise
        extra = () if args.out else ("--out", str(run_dir))
        print(
            f"das-stream: interrupted; {run_dir / CHECKPOINT_FILE} holds the last finished epoch, continue with: "
            + _resume_command(args.argv, *extra),
            file=sys.stderr,
        )
        return 130
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from sampler.package import package_text
    from sampler.package_file import is_package

    if is_package(args.model):
        print(package_text(args.model), end="")
        return 0
    need(f"das-stream info on {args.model} (a torch model file)", "torch")
    from training.card import model_card

    print(model_card(args.model), end="")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    need("das-stream export", "torch", "onnx", extra="train")
    from sampler.export import export_package
    from sampler.torch_model import load_torch_model
    from training.export_check import check_windows

    model = load_torch_model(args.model)
    windows, what = check_windows(model, args.check_video)
    path, check = export_package(model, args.out, windows, what, source=args.model)
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): checked on {check['windows']} windows of the {check['source']}: "
        f"picks identical in {check['picks_identical']}, top class in {check['top_class_agree']}, "
        f"max |p_package - p_torch| = {check['max_abs_prob_diff']:.1e} (probabilities spread {check['prob_spread']:.2f})"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from training.commands import evaluate_model, run_config_path
    from training.config import load_config
    from training.runs import log_warnings_as_lines

    log_warnings_as_lines()
    if args.allow_overlap and not args.data:
        from core.errors import ConfigError

        raise ConfigError("--allow-overlap goes with --data CSV (a recorded split never overlaps the training split)")
    config = load_config(args.config or run_config_path(args.model), overrides=_training_overrides(args))
    from sampler.package_file import is_package

    if is_package(args.model):  # what a deployment runs: ONNX Runtime, clip-level scores
        from training.package_eval import evaluate_package

        if args.data:
            from core.errors import ConfigError

            raise ConfigError("--data scores torch model files; evaluate the model file the package came from")
        got = evaluate_package(args.model, config=config, split=args.split, out=args.out)
        print(
            f"{got['split']}: auc {got['auc']:.4f} balanced_acc {got['acc']:.2f}% loss {got['loss']:.4f} clips "
            f"{got['clips']} (the package on ONNX Runtime); distinct frames picked per clip {got['unique_frames']:.2f} "
            f"of k={got['k']}"
        )
        print("wrote " + ", ".join(got["files"]))
        return 0
    report = evaluate_model(
        args.model,
        config=config,
        split=args.split,
        out=args.out,
        data_path=args.data,
        allow_overlap=args.allow_overlap,
        overwrite=args.overwrite,
    )
    print(f"scored {report.scored}")
    print(
        f"{report.split}: auc {report.auc:.4f} balanced_acc {report.acc:.2f}% loss {report.loss:.4f} "
        f"clips {report.clips}; distinct frames picked per clip {report.unique_frames:.2f} of k={report.k}"
    )
    if report.videos is not None:
        print(
            f"{report.split} whole videos: auc {report.video_auc:.4f} balanced_acc {report.video_balanced_acc:.2f}% "
            f"videos {report.videos} (windows as `das-stream run` cuts them, mean probability per video)"
        )
    print("wrote " + ", ".join(report.files))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from training.commands import calibrate_model, run_config_path
    from training.config import load_config

    config = load_config(args.config or run_config_path(args.model), overrides=_training_overrides(args))
    rule = calibrate_model(args.model, config=config, tolerance=args.tolerance, split=args.split, out=args.out)
    print(f"early exit: {rule.describe()}")
    print(f"wrote {args.out or args.model}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from training.commands import compare
    from training.config import load_config
    from training.report import markdown_table
    from training.runs import log_warnings_as_lines

    log_warnings_as_lines()
    config = load_config(args.config, overrides=_training_overrides(args))
    try:
        rows = compare(config, out=args.out, resume=args.resume)
    except KeyboardInterrupt:
        print(
            "das-stream: interrupted; finished runs are kept, continue with: " + _resume_command(args.argv),
            file=sys.stderr,
        )
        return 130
    print(markdown_table(rows, over="folds x seeds" if config.data.folds > 1 else "seeds"), end="")
    return 0


# --- end training commands ---


# --- cluster command (streamer/cluster, docs/scale-out.md) ---
def _add_cluster(cluster: argparse.ArgumentParser) -> None:
    cluster.add_argument(
        "action", nargs="?", choices=["start", "status"], default="start", help="start (default) or status"
    )
    cluster.add_argument("--config", help="YAML with the sources, replicas and MQTT broker, e.g. configs/ward.yaml")
    cluster.add_argument(
        "--address",
        help="Ray cluster to join: HOST:PORT of its head (`ray start --head --port`), ray://HOST:10001, or auto "
        "(the Ray running on this host); default: RAY_ADDRESS, else a private Ray instance on 127.0.0.1 "
        "(status: this host's private instance)",
    )
    cluster.add_argument("--source", action="append", dest="sources", metavar="SPEC", help="add a stream (repeatable)")
    cluster.add_argument("--replicas", type=int, help="embedder replicas (default 1)")
    cluster.add_argument("--mqtt", metavar="URL", help="publish to mqtt://[user:pass@]HOST:PORT or mqtts://...")
    cluster.add_argument("--duration", type=float, help="stop this many seconds after the first frame")
    cluster.add_argument("--connect-timeout", type=float, help="seconds the Ray address has to answer (default 10)")
    cluster.add_argument("--web", metavar="HOST:PORT", help="serve the live web view of every stream from the driver")
    cluster.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve Prometheus /metrics and /healthz from the driver"
    )
    cluster.set_defaults(handler=_cmd_cluster)


def _cmd_cluster(args: argparse.Namespace) -> int:
    import os

    need("das-stream cluster", "ray")
    from streamer.cluster.driver import run, status

    address = args.address or os.environ.get("RAY_ADDRESS") or None
    if args.action == "status":
        return status(address, timeout=args.connect_timeout or 10.0)
    from streamer.cluster.config import ClusterConfig

    overrides = {
        "sources": args.sources,
        "replicas": args.replicas,
        "mqtt": args.mqtt,
        "duration": args.duration,
        "address": address,
        "connect_timeout": args.connect_timeout,
        "web": args.web,
        "metrics": args.metrics,
    }
    return run(ClusterConfig.load(args.config, overrides))


# --- end cluster command ---


# name -> (adds the command's arguments, add_parser's options); the order of `das-stream --help`.
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], dict[str, Any]]] = {
    "run": (
        _add_run,
        {
            "help": "stream frames through the sampler and classifier (default command)",
            "description": "Attach to a stream, pick k frames per window with the sampler, classify them, publish "
            "predictions and stats. With no arguments: the synthetic source through the bundled demo model, "
            "printed to the console until Ctrl-C.",
        },
    ),
    "subscribe": (_add_subscribe, {"help": "print predictions and stats arriving over MQTT"}),
    "bench": (
        _add_bench,
        {
            "help": "measure compute saved, sampler overhead, throughput and latency on this machine",
            "description": "Runs the benchmark suite (see docs/performance.md) and prints one JSON object. Keys: "
            "compute_ratio, sampler_overhead, throughput_ratio, throughput_fps, latency_p99_ms, capacity_streams, "
            "capacity_streams_full, then details.",
        },
    ),
    "train": (
        _add_train,
        {
            "help": "train one method on one dataset",
            "description": "Train one sampler + classifier; writes model.pt, result.json and figures.",
        },
    ),
    "info": (_add_info, {"help": "print a model's card (method, T, k, fps, classes, data, metrics, export check)"}),
    "export": (
        _add_export,
        {
            "help": "export a model file to a model package (ONNX graphs + card) that runs without torch",
            "description": "Write the sampler's features and scores, the backbone and the pooling head as ONNX "
            "graphs with the model card (classes, preprocessing, T, k, order rule, provenance) into one package "
            "file, after checking it against the torch model on real windows (picks identical, probabilities "
            "within 1e-4; the export fails otherwise).",
        },
    ),
    "evaluate": (
        _add_evaluate,
        {
            "help": "score a trained model on its held-out split, or on other data",
            "description": "Score a model on the val or test split recorded in its model file (the videos it was "
            "validated or tested on, checked by content hash), or with --data on every video of another CSV "
            "(refused when the model trained on any of them, unless --allow-overlap). Writes eval-<split>.json, "
            "predictions, the confusion matrix and a figure of the frames it picks into a new folder.",
        },
    ),
    "calibrate": (
        _add_calibrate,
        {
            "help": "choose a model's early-exit rule on its validation split",
            "description": "Embed each validation window's frames in the sampler's best-first order, check "
            "the prediction after 1, 2, 4, ... frames, and keep the cheapest exit threshold whose "
            "video-level AUC stays within --tolerance of the AUC at k; the rule is written into the "
            "model file (das-stream info shows it, das-stream run uses it).",
        },
    ),
    "compare": (
        _add_compare,
        {
            "help": "run methods x seeds on one dataset, write the table",
            "description": "Train every method x keep x seed of the grid and write <name>.csv, <name>.md and "
            "<name>-auc.png.",
        },
    ),
    "cluster": (
        _add_cluster,
        {
            "help": "run many streams on Ray: one actor per stream, a Ray Serve pool of embedder replicas",
            "description": "Join a Ray cluster (--address / RAY_ADDRESS: HOST:PORT of `ray start --head`, with "
            "its token when it uses Ray's token authentication) or start a private Ray instance on 127.0.0.1, "
            "deploy the embedder replicas, run one actor per source, publish as `das-stream run` does (every key "
            "of `run` means the same in the YAML). `das-stream cluster status` prints per-stream and per-replica "
            "figures of the run at --address, else of this host's private instance. See docs/scale-out.md.",
        },
    ),
}


def _exit_during_start_up(signum: int, frame: Any) -> None:
    """SIGINT while `run` starts (imports, model, warm-up): nothing is open yet, so leave at once.
    Raising KeyboardInterrupt there could land inside a half-done import (seen: numpy's lazy
    submodules then fail with RecursionError instead of the interrupt)."""
    import os

    os.write(2, b"das-stream: interrupted during start-up\n")
    os._exit(130)


def main(argv: Sequence[str] | None = None) -> int:
    command = (list(sys.argv[1:] if argv is None else argv) or ["run"])[0]
    if command == "run":  # until app.run hands SIGINT to the pipeline's clean shutdown
        import signal

        signal.signal(signal.SIGINT, _exit_during_start_up)
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the run's own handlers are in place (start-up)
        print("das-stream: interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]
    command = argv[0] if argv[0] in COMMANDS else None
    try:
        parser = build_parser([command] if command else [])  # only the chosen command's arguments
    except Exception as exc:  # a missing extra, said in one line
        if not is_user_error(exc):
            raise
        print(f"das-stream: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.argv = argv  # what was typed, for the command that continues an interrupted one
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except Exception as exc:
        if not is_user_error(exc):
            raise  # a programming error: keep the traceback
        print(f"das-stream: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
