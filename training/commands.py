"""What ``das-stream train``, ``evaluate`` and ``compare`` do, as plain functions of a config.

A run and its folder are :mod:`.runs`. ``compare`` puts one run folder per method x keep x seed
under its output folder, skips runs whose ``result.json`` exists when resuming, and writes
``<name>.csv``, ``<name>.md`` and ``<name>-auc.png`` next to them; with ``data.folds`` it runs
the cross-validation protocol (:mod:`training.protocol.crossval`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, DataError, ModelFileError
from core.exit import ExitRule
from sampler.device import resolve_device
from sampler.model import SampledClassifier

from .card import duration
from .checkpoint import CHECKPOINT_FILE, check_resume_config, prepare_run_dir
from .clips import DatasetSplits
from .config import ExperimentConfig, load_config
from .confusion import per_class, write_confusion
from .datasets import load_dataset
from .exits import DEFAULT_TOLERANCE, calibrate_clips
from .loop import Evaluation, class_weights, evaluate
from .report import RunResult, SummaryRow, markdown_table, plot_auc, summarize, write_summary_csv
from .runs import CONFIG_FILE, RESULT_FILE, RunLog, grid, plot_picks, run_name, set_threads, train_run


def train(
    config: ExperimentConfig, *, run_dir: str | os.PathLike | None = None, overwrite: bool = False, resume: bool = False
) -> RunResult:
    """``das-stream train``: one method, one seed, on the config's dataset.

    A non-empty ``run_dir`` is refused unless ``overwrite`` (the old outputs are removed) or
    ``resume`` (continue from its epoch checkpoint).
    """
    set_threads(config)
    if config.train.freeze_backbone:
        raise ConfigError(
            "train.freeze_backbone works with `das-stream compare --folds K` on videos only; "
            "drop it for `das-stream train` (or run the cross-validation)",
            key="train.freeze_backbone",
        )
    if run_dir is None:
        run_dir = (
            Path(config.train.out) / config.name / run_name(config.model.method, config.model.keep, config.train.seed)
        )
    prepare_run_dir(Path(run_dir), overwrite=overwrite, resume=resume)
    if resume:
        check_resume_config(Path(run_dir), config.to_dict())
    data = load_dataset(config.data)
    return train_run(config, data, Path(run_dir), resume=resume)


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
    set_threads(config)
    device = resolve_device(config.train.device)
    model = SampledClassifier.load(model_path, map_location=device)
    data = load_dataset(config.data)
    clips = data.split(split)
    mc = model.config
    check_model_fits(model, config, data, model_path)
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
    names = [
        f"eval-{split}.json",
        f"predictions-{split}.csv",
        f"selection-{split}.png",
        f"confusion-{split}.json",
        f"confusion-{split}.png",
    ]
    if config.data.kind == "videos":  # video-level, as `das-stream run` sees a video (docs/protocol.md)
        report = dataclasses.replace(
            report, **_video_level(model, config, clips.names, device, out / f"videos-{split}.json")
        )
        names.append(f"videos-{split}.json")
    report = dataclasses.replace(report, files=tuple(str(out / n) for n in names))
    (out / f"eval-{split}.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    _write_predictions(ev, clips.names, data.class_names, out / f"predictions-{split}.csv")
    plot_picks(ev, data, split, out, title=f"{config.name} {mc.method} k={mc.k}/{mc.num_frames} ({split})")
    confusion = per_class(ev.labels, ev.probs.argmax(axis=1), data.class_names)
    write_confusion(
        confusion,
        out / f"confusion-{split}.json",
        out / f"confusion-{split}.png",
        title=f"{config.name} {mc.method} k={mc.k}/{mc.num_frames} ({split})",
    )
    return report


def _video_level(
    model: SampledClassifier, config: ExperimentConfig, split_names: Sequence[str], device: Any, path: Path
) -> dict[str, Any]:
    """Score the split's whole videos: windows of T, stride S as the runtime cuts them, a video's
    prediction the mean of its windows' probabilities; write them to ``path``."""
    from .video_eval import evaluate_videos, load_whole_videos

    whole = load_whole_videos(config.data)
    wanted = set(split_names)
    videos, labels, names = whole.take(np.array([i for i, n in enumerate(whole.names) if n in wanted], dtype=np.int64))
    stride = config.data.window_stride or config.data.num_frames
    ev = evaluate_videos(
        model,
        videos,
        labels,
        window=config.data.num_frames,
        stride=stride,
        device=device,
        batch_size=config.train.eval_batch_size,
        names=names,
    )
    figures = {"video_auc": ev.scores.auc, "video_balanced_acc": ev.scores.acc, "videos": len(videos)}
    path.write_text(
        json.dumps(
            {
                **figures,
                "window": config.data.num_frames,
                "stride": stride,
                "window_auc": ev.window_scores.auc,
                "window_balanced_acc": ev.window_scores.acc,
                "videos_by_name": {
                    n: {"label": int(y), "probs": [round(float(p), 6) for p in probs], "windows": int(w)}
                    for n, y, probs, w in zip(names, ev.labels, ev.probs, ev.windows_per_video)
                },
            },
            indent=2,
            allow_nan=True,
        )
        + "\n"
    )
    return figures


def check_model_fits(model: SampledClassifier, config: ExperimentConfig, data: DatasetSplits, model_path: Path) -> None:
    """DataError in one line when the model was trained on other inputs than ``config`` gives."""
    mc = model.config
    if mc.num_frames != data.num_frames or tuple(mc.class_names) != data.class_names:
        raise DataError(
            f"model {model_path} expects T={mc.num_frames} and classes {list(mc.class_names)}, but the data of "
            f"{config.source} has T={data.num_frames} and classes {list(data.class_names)}; pass the config it was trained with"
        )
    check_input_size(model, config, data, model_path)


def calibrate_model(
    model_path: str | os.PathLike,
    *,
    config: ExperimentConfig | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    split: str = "val",
    out: str | os.PathLike | None = None,
) -> ExitRule:
    """``das-stream calibrate``: choose a model's early-exit rule on a split of its dataset (the
    cheapest threshold whose video-level AUC stays within ``tolerance`` of k_max's) and write it
    into the model file (``out``: another file instead)."""
    model_path = Path(model_path)
    if config is None:
        config = load_config(run_config_path(model_path))
    if not (0.0 <= tolerance < 1.0):
        raise ConfigError(f"--tolerance must be an AUC difference in [0, 1), got {tolerance!r}")
    set_threads(config)
    device = resolve_device(config.train.device)
    model = SampledClassifier.load(model_path, map_location=device)
    if model.sampler.keeps_all:
        raise ConfigError(
            f"model {model_path} keeps every frame ({model.config.method}); there is no order to stop early on"
        )
    data = load_dataset(config.data)
    check_model_fits(model, config, data, model_path)
    rule = calibrate_clips(model, data.split(split), device=device, tolerance=tolerance)
    model.meta["exit"] = rule.to_dict()
    model.save(Path(out) if out is not None else model_path)
    return rule


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
    set_threads(config)
    out = Path(out) if out is not None else Path(config.train.out) / config.name
    if config.data.folds > 1:
        from .protocol.crossval import compare_folds

        return compare_folds(config, out=out, resume=resume)
    out.mkdir(parents=True, exist_ok=True)
    progress = RunLog(out / "compare.log")
    start = time.perf_counter()
    plan = grid(config)
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


def _write_predictions(ev: Evaluation, names: tuple[str, ...], class_names: tuple[str, ...], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip", "label", "predicted", *(f"p_{c}" for c in class_names), "picked"])
        for name, label, probs, picked in zip(names, ev.labels, ev.probs, ev.indices):
            writer.writerow(
                [
                    name,
                    class_names[label],
                    class_names[int(probs.argmax())],
                    *(f"{p:.4f}" for p in probs),
                    " ".join(map(str, picked)),
                ]
            )
