"""What ``das-stream train``, ``evaluate`` and ``compare`` do, as plain functions of a config.

A run folder holds ``model.pt``, ``config.yaml`` (the exact experiment config, so ``evaluate``
needs nothing else), ``train.log``, ``history.csv``, ``result.json`` and
``selection-test.png``. ``compare`` puts one run folder per method x keep x seed under its output
folder, skips runs whose ``result.json`` exists when resuming, and writes ``<name>.csv``,
``<name>.md`` and ``<name>-auc.png`` next to them.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..errors import ConfigError, DataError, ModelFileError
from ..model import ModelConfig, SampledClassifier, build_model
from .card import duration, padding_notes, training_meta
from .checkpoint import CHECKPOINT_FILE, check_resume_config, prepare_run_dir
from .confusion import per_class, write_confusion
from .config import ExperimentConfig, k_for, load_config
from .datasets import DatasetSplits, load_dataset
from ..settings import resolve_device
from .loop import EpochLog, Evaluation, class_weights, evaluate, fit, seed_everything
from .report import RunResult, SummaryRow, markdown_table, plot_auc, plot_selection, summarize, write_summary_csv

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
    return 1.0 if method == "full" else keep


def run_name(method: str, keep: float, seed: int) -> str:
    """Folder name of one run, e.g. ``das-keep0.5-seed0``."""
    return f"{method}-keep{keep_of(method, keep):g}-seed{seed}"


def model_config(config: ExperimentConfig, data: DatasetSplits) -> ModelConfig:
    """The model an experiment config asks for, sized to the data (T, classes)."""
    m = config.model
    t = data.num_frames
    k = k_for(m.method, m.keep, t)
    return ModelConfig(
        method=m.method,
        num_frames=t,
        k=k,
        class_names=data.class_names,
        feature_size=m.feature_size,
        input_size=m.input_size,
        backbone=m.backbone,
        backbone_weights=m.backbone_weights,
        sampler_kwargs=dict(m.sampler),
        classifier_kwargs=dict(m.classifier),
        name=f"{config.name}-{m.method}",
    )


def train(
    config: ExperimentConfig, *, run_dir: str | os.PathLike | None = None, overwrite: bool = False, resume: bool = False
) -> RunResult:
    """``das-stream train``: one method, one seed, on the config's dataset.

    A non-empty ``run_dir`` is refused unless ``overwrite`` (the old outputs are removed) or
    ``resume`` (continue from its epoch checkpoint).
    """
    _set_threads(config)
    if config.train.freeze_backbone:
        raise ConfigError("train.freeze_backbone works with `das-stream compare --folds K` on videos only; "
                          "drop it for `das-stream train` (or run the cross-validation)", key="train.freeze_backbone")
    if run_dir is None:
        run_dir = Path(config.train.out) / config.name / run_name(config.model.method, config.model.keep, config.train.seed)
    prepare_run_dir(Path(run_dir), overwrite=overwrite, resume=resume)
    if resume:
        check_resume_config(Path(run_dir), config.to_dict())
    data = load_dataset(config.data)
    return train_run(config, data, Path(run_dir), resume=resume)


INIT_FIELDS = ("method", "num_frames", "k", "class_names", "feature_size", "input_size", "backbone", "sampler_kwargs", "classifier_kwargs")


def start_from(model: SampledClassifier, path: Path) -> None:
    """Load the weights of the model file ``path`` into ``model`` (``train.init_from``), after
    checking that both are the same model; the backbone's source becomes the file."""
    src = SampledClassifier.load(path, map_location="cpu")
    for name in INIT_FIELDS:
        mine, theirs = getattr(model.config, name), getattr(src.config, name)
        if mine != theirs:
            raise ConfigError(f"train.init_from: {path} has {name}={theirs!r} but this config builds {name}={mine!r}; "
                              f"set the model section to match the file or start from another model")
    model.load_state_dict(src.state_dict())
    model.classifier.weights_source = str(path)


def train_run(config: ExperimentConfig, data: DatasetSplits, run_dir: Path, *, resume: bool = False,
              backbone: tuple[dict[str, torch.Tensor], str] | None = None) -> RunResult:
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
    model = build_model(model_config(config, data), load_backbone_weights=backbone is None and not config.train.init_from)
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
    _write_history(fitted.history, run_dir / "history.csv")
    weight = class_weights(data.train.labels, len(data.class_names), config.train.class_weights)
    test = evaluate(model, data.test, device=device, batch_size=config.train.eval_batch_size, weight=weight)
    _plot_picks(test, data, "test", run_dir, title=f"{config.name} {mc.method} k={mc.k}/{mc.num_frames} seed {config.train.seed}")
    best = fitted.best
    model.meta["metrics"] = {"best_epoch": fitted.best_epoch, "val_auc": best.val.auc, "val_acc": best.val.acc,
                             "test_auc": test.scores.auc, "test_acc": test.scores.acc, "test_clips": len(data.test)}
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


@dataclass(frozen=True)
class EvaluateReport:
    """What ``das-stream evaluate`` measured (also written as ``eval-<split>.json``)."""

    model: str
    split: str
    clips: int
    loss: float
    auc: float
    acc: float
    unique_frames: float
    k: int
    num_frames: int
    files: tuple[str, ...] = ()  # what evaluate wrote
    video_auc: float | None = None  # video datasets: whole videos, mean of their windows (docs/protocol.md)
    video_balanced_acc: float | None = None
    videos: int | None = None


def evaluate_model(
    model_path: str | os.PathLike,
    *,
    config: ExperimentConfig | None = None,
    split: str = "test",
    out: str | os.PathLike | None = None,
) -> EvaluateReport:
    """``das-stream evaluate``: score a saved model on one split of its dataset.

    Args:
        model_path: a model file written by ``train``.
        config: the experiment config; default the ``config.yaml`` saved next to the model.
        split: ``val`` or ``test`` (``train`` works too).
        out: folder for ``eval-<split>.json``, ``predictions-<split>.csv`` and
            ``selection-<split>.png``; default the model's folder.
    """
    model_path = Path(model_path)
    if config is None:
        config = load_config(run_config_path(model_path))
    _set_threads(config)
    device = resolve_device(config.train.device)
    model = SampledClassifier.load(model_path, map_location=device)
    data = load_dataset(config.data)
    clips = data.split(split)
    mc = model.config
    if mc.num_frames != data.num_frames or tuple(mc.class_names) != data.class_names:
        raise DataError(
            f"model {model_path} expects T={mc.num_frames} and classes {list(mc.class_names)}, but the data of "
            f"{config.source} has T={data.num_frames} and classes {list(data.class_names)}; pass the config it was trained with"
        )
    check_input_size(model, config, data, model_path)
    weight = class_weights(data.train.labels, len(data.class_names), config.train.class_weights)
    ev = evaluate(model, clips, device=device, batch_size=config.train.eval_batch_size, weight=weight)
    out = Path(out) if out is not None else model_path.parent
    out.mkdir(parents=True, exist_ok=True)
    report = EvaluateReport(
        model=str(model_path),
        split=split,
        clips=len(clips),
        loss=ev.loss,
        auc=ev.scores.auc,
        acc=ev.scores.acc,
        unique_frames=ev.unique_frames,
        k=mc.k,
        num_frames=mc.num_frames,
    )
    names = [f"eval-{split}.json", f"predictions-{split}.csv", f"selection-{split}.png", f"confusion-{split}.json", f"confusion-{split}.png"]
    if config.data.kind == "videos":  # video-level, as `das-stream run` sees a video (docs/protocol.md)
        report = dataclasses.replace(report, **_video_level(model, config, clips.names, device, out / f"videos-{split}.json"))
        names.append(f"videos-{split}.json")
    report = dataclasses.replace(report, files=tuple(str(out / n) for n in names))
    (out / f"eval-{split}.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    _write_predictions(ev, clips.names, data.class_names, out / f"predictions-{split}.csv")
    _plot_picks(ev, data, split, out, title=f"{config.name} {mc.method} k={mc.k}/{mc.num_frames} ({split})")
    confusion = per_class(ev.labels, ev.probs.argmax(axis=1), data.class_names)
    write_confusion(confusion, out / f"confusion-{split}.json", out / f"confusion-{split}.png",
                    title=f"{config.name} {mc.method} k={mc.k}/{mc.num_frames} ({split})")
    return report


def _video_level(model: SampledClassifier, config: ExperimentConfig, split_names: Sequence[str], device: Any,
                 path: Path) -> dict[str, Any]:
    """Score the split's whole videos: windows of T, stride S as the runtime cuts them, a video's
    prediction the mean of its windows' probabilities; write them to ``path``."""
    from .video_eval import evaluate_videos, load_whole_videos

    whole = load_whole_videos(config.data)
    wanted = set(split_names)
    videos, labels, names = whole.take(np.array([i for i, n in enumerate(whole.names) if n in wanted], dtype=np.int64))
    stride = config.data.window_stride or config.data.num_frames
    ev = evaluate_videos(model, videos, labels, window=config.data.num_frames, stride=stride, device=device,
                         batch_size=config.train.eval_batch_size, names=names)
    figures = {"video_auc": ev.scores.auc, "video_balanced_acc": ev.scores.acc, "videos": len(videos)}
    path.write_text(json.dumps({**figures, "window": config.data.num_frames, "stride": stride,
                                "window_auc": ev.window_scores.auc, "window_balanced_acc": ev.window_scores.acc,
                                "videos_by_name": {n: {"label": int(y), "probs": [round(float(p), 6) for p in probs],
                                                       "windows": int(w)}
                                                   for n, y, probs, w in zip(names, ev.labels, ev.probs, ev.windows_per_video)}},
                               indent=2, allow_nan=True) + "\n")
    return figures


def check_input_size(model: SampledClassifier, config: ExperimentConfig, data: DatasetSplits, model_path: Path) -> None:
    """Refuse a config whose input sizes (or recorded preprocessing) differ from the model's, as for T."""
    mc, m, pre = model.config, config.model, model.preprocessing
    mismatch = [
        f"{key}={ours} (model {theirs})"
        for key, ours, theirs in (
            ("model.input_size", m.input_size, mc.input_size),
            ("model.feature_size", m.feature_size, mc.feature_size),
            ("data.size", int(data.train.x.shape[-1]), pre.get("size")),
            ("data.fps", config.data.fps if config.data.kind == "videos" else None, pre.get("fps")),
        )
        if theirs is not None and ours != theirs
    ]
    if mismatch:
        raise DataError(
            f"model {model_path} was trained on other inputs than {config.source} gives: {', '.join(mismatch)}; "
            "pass the config it was trained with"
        )


def run_config_path(model_path: str | os.PathLike) -> Path:
    """The experiment config ``train`` saved next to a model."""
    if not Path(model_path).is_file():
        raise ModelFileError(f"model file {model_path} does not exist; check the path or train a model first")
    path = Path(model_path).parent / CONFIG_FILE
    if not path.is_file():
        raise DataError(f"no {CONFIG_FILE} next to model {model_path}; pass the training config with --config")
    return path


def compare(
    config: ExperimentConfig,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
) -> list[SummaryRow]:
    """``das-stream compare``: every method x keep x seed of ``config.grid``, then the summary.

    Args:
        config: the experiment; ``model.method``, ``model.keep`` and ``train.seed`` are replaced
            by the grid's values.
        out: folder for the run folders and the summary; default ``train.out/<name>``.
        resume: skip runs whose ``result.json`` exists (the grid takes hours).
    """
    _set_threads(config)
    out = Path(out) if out is not None else Path(config.train.out) / config.name
    if config.data.folds > 1:
        from .crossval import compare_folds

        return compare_folds(config, out=out, resume=resume)
    out.mkdir(parents=True, exist_ok=True)
    progress = RunLog(out / "compare.log")
    start = time.perf_counter()
    plan = _grid(config)
    data: DatasetSplits | None = None
    results = []
    for i, (method, keep, seed) in enumerate(plan, start=1):
        run_dir = out / run_name(method, keep, seed)
        if resume and (run_dir / RESULT_FILE).is_file():
            progress(f"[{i}/{len(plan)}] {run_dir.name}: result exists, skipped (--resume)")
            results.append(RunResult.load(run_dir / RESULT_FILE))
            continue
        progress(f"[{i}/{len(plan)}] {run_dir.name} (after {duration(time.perf_counter() - start)})")
        data = data if data is not None else load_dataset(config.data)
        run_config = config.replace(model={"method": method, "keep": keep}, train={"seed": seed})
        results.append(train_run(run_config, data, run_dir, resume=resume and (run_dir / CHECKPOINT_FILE).is_file()))
    progress(f"compare: {len(plan)} runs done in {duration(time.perf_counter() - start)} of wall-clock time")
    rows = summarize(results)
    write_summary_csv(rows, out / f"{config.name}.csv")
    (out / f"{config.name}.md").write_text(markdown_table(rows))
    plot_auc(rows, out / f"{config.name}-auc.png", title=f"{config.name}: test AUC (mean; ± std when n > 1 seeds)")
    return rows


def _grid(config: ExperimentConfig) -> list[tuple[str, float, int]]:
    """(method, keep, seed) runs; ``full`` once per seed whatever the keep ratios."""
    g = config.grid
    runs = []
    for method in g.methods:
        for keep in (1.0,) if method == "full" else g.keeps:
            runs += [(method, keep, seed) for seed in g.seeds]
    return runs


def _set_threads(config: ExperimentConfig) -> None:
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)


def _write_history(history: tuple[EpochLog, ...], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "train_loss", "val_loss", "val_auc", "val_acc", "unique_frames", "seconds"])
        for e in history:
            writer.writerow([e.epoch, f"{e.train_loss:.5f}", f"{e.val_loss:.5f}", f"{e.val.auc:.4f}", f"{e.val.acc:.2f}", f"{e.unique_frames:.2f}", f"{e.seconds:.1f}"])


def _write_predictions(ev: Evaluation, names: tuple[str, ...], class_names: tuple[str, ...], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip", "label", "predicted", *(f"p_{c}" for c in class_names), "picked"])
        for name, label, probs, picked in zip(names, ev.labels, ev.probs, ev.indices):
            writer.writerow(
                [name, class_names[label], class_names[int(probs.argmax())], *(f"{p:.4f}" for p in probs), " ".join(map(str, picked))]
            )


def _plot_picks(ev: Evaluation, data: DatasetSplits, split: str, out: Path, *, title: str) -> None:
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
