"""One training run and its folder: ``model.pt``, ``config.yaml`` (the exact experiment config, so
``evaluate`` needs nothing else), ``train.log``, ``history.csv``, ``result.json`` and
``selection-test.png``; and the grid of runs ``compare`` makes (one folder per method x keep x
seed, named by :func:`run_name`).
"""

from __future__ import annotations

import csv
import dataclasses
import sys
from pathlib import Path

import torch
import yaml

from core.errors import ConfigError
from sampler.device import resolve_device
from sampler.model import SAMPLERS, ModelConfig, SampledClassifier, build_model

from .card import duration, padding_notes, training_meta
from .checkpoint import CHECKPOINT_FILE
from .clips import DatasetSplits
from .config import ExperimentConfig
from .exits import calibrate_clips
from .loop import EpochLog, Evaluation, class_weights, evaluate, fit, seed_everything
from .report import RunResult, plot_selection

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.yaml"
RESULT_FILE = "result.json"


class RunLog:
    """Writes progress lines to stderr and appends them to a log file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(line + "\n")


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


def train_run(
    config: ExperimentConfig,
    data: DatasetSplits,
    run_dir: Path,
    *,
    resume: bool = False,
    backbone: tuple[dict[str, torch.Tensor], str] | None = None,
) -> RunResult:
    """Train one model on preloaded data and write everything into ``run_dir``.

    ``backbone``: a state dict for the backbone and what it holds (``"imagenet"``, ``"none"``,
    a path), loaded instead of ``model.backbone_weights`` (the frozen backbone the data was
    embedded with, :mod:`.frozen`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (run_dir / "train.log").unlink(missing_ok=True)
    log = RunLog(run_dir / "train.log")
    device = resolve_device(config.train.device)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
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
    log(
        f"train {config.name} method={mc.method} k={mc.k}/T={mc.num_frames} seed={config.train.seed} device={device} "
        f"clips train/val/test={len(data.train)}/{len(data.val)}/{len(data.test)} backbone={mc.backbone} "
        f"weights={model.classifier.weights_source} input={mc.input_size}px"
    )
    for note in (*data.notes, *padding_notes(data)):
        log(note)
    fitted = fit(model, data, config.train, device=device, log=log, checkpoint=run_dir / CHECKPOINT_FILE, resume=resume)
    write_history(fitted.history, run_dir / "history.csv")
    weight = class_weights(data.train.labels, len(data.class_names), config.train.class_weights)
    test = evaluate(model, data.test, device=device, batch_size=config.train.eval_batch_size, weight=weight)
    plot_picks(
        test,
        data,
        "test",
        run_dir,
        title=f"{config.name} {mc.method} k={mc.k}/{mc.num_frames} seed {config.train.seed}",
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
        f"test auc {test.scores.auc:.3f} balanced acc {test.scores.acc:.1f}% on n={len(data.test)} clips -> {run_dir}"
    )
    return result


def grid(config: ExperimentConfig) -> list[tuple[str, float, int]]:
    """(method, keep, seed) runs; ``full`` once per seed whatever the keep ratios."""
    g = config.grid
    runs = []
    for method in g.methods:
        for keep in (1.0,) if SAMPLERS[method].keeps_all else g.keeps:
            runs += [(method, keep, seed) for seed in g.seeds]
    return runs


def set_threads(config: ExperimentConfig) -> None:
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)


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


def plot_picks(ev: Evaluation, data: DatasetSplits, split: str, out: Path, *, title: str) -> None:
    clips = data.split(split)
    plot_selection(
        indices=ev.indices,
        valid=clips.valid,
        labels=clips.labels,
        class_names=data.class_names,
        clips=clips.x,
        path=out / f"selection-{split}.png",
        title=title,
        names=clips.names,
    )
