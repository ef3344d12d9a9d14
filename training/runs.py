"""One training run and its folder: ``model.pt`` (with the split it was trained on, see
:mod:`.split`), ``config.yaml`` (the experiment config with every value resolved to what was
used: absolute data paths, the classes, the device, the thread count, the backbone weights the
model started from; so ``evaluate`` needs nothing else), ``train.log``, ``history.csv``,
``result.json`` and ``selection-test.png``; and the grid of runs ``compare`` makes (one folder per
method x keep x seed, named by :func:`run_name`).

Log lines (:class:`RunLog`) have one format: ``YYYY-MM-DD HH:MM:SS text``; warnings start their
text with ``warning:`` and notes with ``note:``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from core.errors import ConfigError, DataError
from sampler.device import resolve_device
from sampler.model import SAMPLERS, ModelConfig, SampledClassifier, build_model

from .card import duration, padding_notes, training_meta
from .checkpoint import CHECKPOINT_FILE, resume_conflict
from .clips import Clips, DatasetSplits
from .config import ExperimentConfig, auto_threads
from .exits import calibrate_clips
from .loop import EpochLog, Evaluation, class_weights, evaluate, fit, seed_everything
from .report import RunResult, plot_selection

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.yaml"
RESULT_FILE = "result.json"


LOG_TIME = "%Y-%m-%d %H:%M:%S"


def stamped(text: str) -> str:
    """``text`` as log lines: every line prefixed with the local time."""
    now = time.strftime(LOG_TIME)
    return "\n".join(f"{now} {line}" for line in text.splitlines() or [""])


class RunLog:
    """Writes progress lines, time-stamped, to stderr and appends them to a log file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        text = stamped(line)
        print(text, file=sys.stderr, flush=True)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(text + "\n")


class _LogFormat(logging.Formatter):
    """Records of the ``logging`` module (e.g. the backbone's missing-weights warning) in the
    :class:`RunLog` format: ``YYYY-MM-DD HH:MM:SS warning: text``."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return stamped(level + record.getMessage())


def log_warnings_as_lines() -> None:
    """Print warnings of the ``logging`` module (training commands) as :class:`RunLog` lines."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h.formatter, _LogFormat)]:
        root.removeHandler(old)  # one handler, on the current stderr
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormat())
    handler.setLevel(logging.WARNING)
    root.addHandler(handler)


def keep_of(method: str, keep: float) -> float:
    """The keep ratio a method actually uses (``full`` keeps everything)."""
    return SAMPLERS[method].keep_ratio(keep)


def run_name(method: str, keep: float, seed: int) -> str:
    """Folder name of one run, e.g. ``das-keep0.5-seed0``."""
    return f"{method}-keep{keep_of(method, keep):g}-seed{seed}"


def sampler_options(config: ExperimentConfig) -> dict:
    """The sampler's options: the config's, and Uniform's nested (coarse-to-fine) picks when one
    model is trained for every k (``train.k_schedule: random``)."""
    options = dict(config.model.sampler)
    if config.train.k_schedule != "fixed" and config.model.method == "uniform":
        options.setdefault("nested", True)
    return options


def model_config(config: ExperimentConfig, data: DatasetSplits) -> ModelConfig:
    """The model an experiment config asks for, sized to the data (T, classes)."""
    m = dataclasses.replace(config.model, sampler=sampler_options(config))
    return m.model_config(data.num_frames, data.class_names, f"{config.name}-{m.method}")


INIT_FIELDS = (
    "method",
    "num_frames",
    "k",
    "class_names",
    "feature_size",
    "input_size",
    "backbone",
    "sampler",
    "classifier",
)


def start_from(model: SampledClassifier, path: Path) -> None:
    """Load the weights of the model file ``path`` into ``model`` (``train.init_from``), after
    checking that both are the same model; the backbone's source becomes the file."""
    src = SampledClassifier.load(path, map_location="cpu")
    for name in INIT_FIELDS:
        mine, theirs = getattr(model.config, name), getattr(src.config, name)
        if mine != theirs:
            raise ConfigError(
                f"train.init_from: {path} has {name}={theirs!r} but this config builds {name}={mine!r}; "
                f"set the model section to match the file or start from another model"
            )
    model.load_state_dict(src.state_dict())
    model.classifier.weights_source = str(path)


def resolved_config(
    config: ExperimentConfig, data: DatasetSplits, *, device: Any, threads: int, weights: str
) -> dict[str, Any]:
    """The experiment config as it was carried out: absolute data paths, the classes, the
    device, the thread count and the backbone weights the model started from."""
    out = config.to_dict()
    d, c = out["data"], config.data
    if c.path:
        d["path"] = str(c.file.absolute())
    if c.root:
        d["root"] = str(c.video_root.absolute())
    if c.crop_file:
        d["crop_file"] = str(c.resolve(c.crop_file).absolute())
    d["cache_dir"] = str(Path(c.cache_dir).expanduser().absolute())
    if c.kind != "synthetic":
        d["classes"] = list(data.class_names)
    out["model"]["backbone_weights"] = weights
    out["train"]["device"] = str(device)
    out["train"]["threads"] = threads
    return out


def _changes(requested: dict[str, Any], resolved: dict[str, Any]) -> list[str]:
    return [
        f"{section}.{key} {requested[section][key]!r} -> {value!r}"
        for section, values in resolved.items()
        if isinstance(values, dict)
        for key, value in values.items()
        if requested[section].get(key) != value
    ]


def write_run_config(path: Path, requested: dict[str, Any], resolved: dict[str, Any]) -> None:
    """``config.yaml``: the resolved config, headed by what resolving changed."""
    changes = _changes(requested, resolved)
    head = "# The experiment config as das-stream carried it out (values resolved to what was used).\n"
    if changes:
        head += "# Resolved from the requested config: " + "; ".join(changes) + "\n"
    path.write_text(head + yaml.safe_dump(resolved, sort_keys=False))


def train_run(
    config: ExperimentConfig,
    data: DatasetSplits,
    run_dir: Path,
    *,
    resume: bool = False,
    strict_resume: bool = True,
    notes: bool = True,
    backbone: tuple[dict[str, torch.Tensor], str] | None = None,
) -> RunResult:
    """Train one model on preloaded data and write everything into ``run_dir``.

    ``resume``: continue from ``checkpoint.pt``; a checkpoint written with another config is an
    error (``strict_resume``, ``das-stream train``) or, for ``compare``, trained again from the
    start with a ``warning:`` line. ``notes``: log the data's notes (``compare`` logs them once
    instead). ``backbone``: a state dict for the backbone and what it holds (``"imagenet"``,
    ``"none"``, a path), loaded instead of ``model.backbone_weights`` (the frozen backbone the
    data was embedded with, :mod:`.frozen`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (run_dir / "train.log").unlink(missing_ok=True)
    log = RunLog(run_dir / "train.log")
    device = resolve_device(config.train.device)
    threads = set_threads(config)
    seed_everything(config.train.seed)
    model = build_model(
        model_config(config, data), load_backbone_weights=backbone is None and not config.train.init_from
    )
    if backbone is not None:
        model.classifier.backbone.load_state_dict(backbone[0])
        model.classifier.weights_source = backbone[1]
    if config.train.init_from:
        start_from(model, Path(config.train.init_from))
    # Record the weights the backbone actually holds ("none" when "auto" fell back to random init).
    model.config = mc = dataclasses.replace(model.config, backbone_weights=model.classifier.weights_source)
    model.meta = training_meta(config, data, model, requested_weights=config.model.backbone_weights)
    requested = config.to_dict()
    resolved = resolved_config(config, data, device=device, threads=threads, weights=mc.backbone_weights)
    if resume:
        changed = resume_conflict(run_dir, requested, resolved)
        if changed and strict_resume:
            raise DataError(
                f"--resume: the config differs from the one {run_dir} started with ({', '.join(changed[:4])}); "
                "resume with the same config (only train.epochs may change) or start again with --overwrite"
            )
        if changed:
            log(
                f"warning: {CHECKPOINT_FILE} in {run_dir} was written with another config ({', '.join(changed[:4])}); "
                "training this run from the start"
            )
            resume = False
    write_run_config(run_dir / CONFIG_FILE, requested, resolved)
    log(
        f"train {config.name} method={mc.method} k={mc.k}/T={mc.num_frames} seed={config.train.seed} device={device} "
        f"threads={threads} clips train/val/test={len(data.train)}/{len(data.val)}/{len(data.test)} "
        f"backbone={mc.backbone} weights={model.classifier.weights_source} input={mc.input_size}px"
    )
    for note in (*data.notes, *data_notes(config, data)) if notes else ():
        log(note)
    try:
        fitted = fit(
            model, data, config.train, device=device, log=log, checkpoint=run_dir / CHECKPOINT_FILE, resume=resume
        )
    except KeyboardInterrupt:
        if (run_dir / CHECKPOINT_FILE).is_file():
            log(f"interrupted; {run_dir / CHECKPOINT_FILE} holds the last finished epoch: continue with --resume")
        raise
    write_history(fitted.history, run_dir / "history.csv")
    weight = class_weights(data.train.labels, len(data.class_names), config.train.class_weights)
    test = evaluate(model, data.test, device=device, batch_size=config.train.eval_batch_size, weight=weight)
    plot_picks(
        test,
        data.test,
        data.class_names,
        run_dir / "selection-test.png",
        title=f"{config.name} {mc.method} k={mc.k}/{mc.num_frames} seed {config.train.seed}, test split",
    )
    best = fitted.best
    model.meta["metrics"] = {
        "best_epoch": fitted.best_epoch,
        "val_auc": best.val.auc,
        "val_acc": best.val.acc,
        "test_auc": test.scores.auc,
        "test_acc": test.scores.acc,
        "test_clips": len(data.test),
    }
    if config.train.k_schedule != "fixed" and not model.sampler.keeps_all:
        rule = calibrate_clips(model, data.val, device=device)
        model.meta["exit"] = rule.to_dict()
        log(f"early exit calibrated on validation: {rule.describe()}")
    model.save(run_dir / MODEL_FILE)
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    result = RunResult(
        dataset=config.name,
        method=mc.method,
        keep=keep_of(mc.method, config.model.keep),
        seed=config.train.seed,
        k=mc.k,
        num_frames=mc.num_frames,
        val=best.val,
        test=test.scores,
        val_loss=best.val_loss,
        best_epoch=fitted.best_epoch,
        epochs_run=len(fitted.history),
        unique_frames=test.unique_frames,
        train_seconds=round(fitted.seconds, 1),
        device=str(device),
    )
    result.save(run_dir / RESULT_FILE)
    log(
        f"done in {duration(fitted.seconds)}: best epoch {fitted.best_epoch}, val auc {best.val.auc:.3f}; "
        f"test auc {test.scores.auc:.3f} balanced acc {test.scores.acc:.1f}% on n={len(data.test)} "
        f"{_clip_word(config)} -> {run_dir}"
    )
    return result


def _clip_word(config: ExperimentConfig) -> str:
    """What one test sample is: a clip, or a runtime window of a video (cross-validation)."""
    return "windows" if config.data.kind == "videos" and config.data.folds > 1 else "clips"


def data_notes(config: ExperimentConfig, data: DatasetSplits) -> list[str]:
    """What the data goes through that a reader should know: a resize between the frames' size
    and the backbone's input size, and padded clips."""
    return [*resize_note(config, int(data.train.x.shape[-1])), *padding_notes(data)]


def resize_note(config: ExperimentConfig, size: int) -> list[str]:
    """A ``note:`` line when frames of ``size`` px are resized for the backbone (none when equal)."""
    input_size = config.model.input_size
    if size == input_size:
        return []
    return [
        f"note: the frames are {size} px (data.size, or the volumes' own size) and the backbone takes "
        f"{input_size} px (model.input_size): every frame is resized from {size} to {input_size} px before it"
    ]


def grid(config: ExperimentConfig) -> list[tuple[str, float, int]]:
    """(method, keep, seed) runs; ``full`` once per seed whatever the keep ratios."""
    g = config.grid
    runs = []
    for method in g.methods:
        for keep in (1.0,) if SAMPLERS[method].keeps_all else g.keeps:
            runs += [(method, keep, seed) for seed in g.seeds]
    return runs


def set_threads(config: ExperimentConfig) -> int:
    """Give torch ``train.threads`` CPU threads (0: :func:`~.config.auto_threads`); returns the count."""
    threads = config.train.threads or auto_threads()
    torch.set_num_threads(threads)
    return threads


def write_history(history: tuple[EpochLog, ...], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "train_loss", "val_loss", "val_auc", "val_acc", "unique_frames", "seconds"])
        for e in history:
            writer.writerow(
                [
                    e.epoch,
                    f"{e.train_loss:.5f}",
                    f"{e.val_loss:.5f}",
                    f"{e.val.auc:.4f}",
                    f"{e.val.acc:.2f}",
                    f"{e.unique_frames:.2f}",
                    f"{e.seconds:.1f}",
                ]
            )


def plot_picks(ev: Evaluation, clips: Clips, class_names: tuple[str, ...], path: Path, *, title: str) -> None:
    plot_selection(
        indices=ev.indices,
        valid=clips.valid,
        labels=clips.labels,
        class_names=class_names,
        clips=clips.x,
        path=path,
        title=title,
        names=clips.names,
    )


class GridClock:
    """Elapsed time of a grid of runs and, once a run has finished, an estimate of the rest."""

    def __init__(self, to_train: int) -> None:
        self.to_train = to_train
        self.start = time.perf_counter()
        self.seconds: list[float] = []

    @property
    def trained(self) -> int:
        return len(self.seconds)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds.append(time.perf_counter() - t0)

    def status(self) -> str:
        """``elapsed 8.1 min`` and, after the first run, ``about 40 min left (4.0 min per run, ...)``."""
        text = f"elapsed {duration(self.elapsed)}"
        if not self.seconds:
            return text
        per = sum(self.seconds) / len(self.seconds)
        left = per * (self.to_train - len(self.seconds))
        return (
            f"{text}; about {duration(left)} left, {duration(self.elapsed + left)} in all "
            f"({duration(per)} per run so far)"
        )
