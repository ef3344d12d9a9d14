"""What ``das-stream train``, ``evaluate`` and ``compare`` do, as plain functions of a config.

A run and its folder are :mod:`.runs`. ``evaluate`` scores the split recorded in the model file
(:mod:`.split`), or other data given explicitly. ``compare`` puts one run folder per method x
keep x seed under its output folder, skips runs whose ``result.json`` exists when resuming, and
writes ``<name>.csv``, ``<name>.md`` and ``<name>-auc.png`` next to them, over every finished run
in the folder; with ``data.folds`` it runs the cross-validation protocol
(:mod:`training.protocol.crossval`).
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

from .card import duration, split_summary
from .checkpoint import CHECKPOINT_FILE, clear_outputs, prepare_run_dir
from .clips import SPLITS, Clips, ClipSet, DatasetSplits
from .config import DataConfig, ExperimentConfig, load_config
from .confusion import per_class, write_confusion
from .datasets import decode_clips, groups_of_names, load_dataset, load_medmnist3d, read_video_index, require_file
from .exits import DEFAULT_TOLERANCE, calibrate_clips, windows_of_clips
from .loop import Evaluation, class_weights, evaluate
from .protocol.curves import CURVE_FILE, run_curve, write_curve_summaries
from .report import RunResult, SummaryRow, markdown_table, plot_auc, summarize, write_summary_csv
from .runs import (
    CONFIG_FILE,
    MODEL_FILE,
    RESULT_FILE,
    GridClock,
    RunLog,
    data_notes,
    grid,
    plot_picks,
    run_name,
    set_threads,
    train_run,
)
from .split import array_digest, overlap, regroup


def default_run_dir(config: ExperimentConfig) -> Path:
    """``train.out/<name>/<method>-keep<k>-seed<s>``: where ``train`` writes without ``--out``."""
    return Path(config.train.out) / config.name / run_name(config.model.method, config.model.keep, config.train.seed)


def train(
    config: ExperimentConfig, *, run_dir: str | os.PathLike | None = None, overwrite: bool = False, resume: bool = False
) -> RunResult:
    """``das-stream train``: one method, one seed, on the config's dataset.

    A non-empty ``run_dir`` is refused unless ``overwrite`` (the old outputs are removed) or
    ``resume`` (continue from its epoch checkpoint, with the same config).
    """
    set_threads(config)
    if config.train.freeze_backbone:
        raise ConfigError(
            "train.freeze_backbone works with `das-stream compare --folds K` on videos only; "
            "drop it for `das-stream train` (or run the cross-validation)",
            key="train.freeze_backbone",
        )
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    prepare_run_dir(run_dir, overwrite=overwrite, resume=resume)
    data = load_dataset(config.data)
    return train_run(config, data, run_dir, resume=resume)


@dataclass(frozen=True)
class EvaluateReport:
    """What ``das-stream evaluate`` measured (also written as ``eval-<split>.json``).

    ``scored`` says which samples: the model's recorded ``val``/``test`` split, or every video of
    other data (``--data``); ``seen`` counts those the model trained or validated on (the same
    content) and those of a patient group it trained or validated on."""

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
    scored: str = ""
    seen: dict[str, int] | None = None
    out: str = ""


EVAL_OUTPUTS = (
    "eval-*.json",
    "predictions-*.csv",
    "selection-*.png",
    "confusion-*.json",
    "confusion-*.png",
    "videos-*.json",
    "evaluate.log",
)


def eval_dir(model_path: Path, out: str | os.PathLike | None, label: str, *, overwrite: bool) -> Path:
    """The folder ``evaluate`` writes to: ``out`` (empty, or emptied of evaluate outputs with
    ``overwrite``), or a new ``eval-<label>-<time>`` folder next to the model (made later, when
    there is something to write)."""
    if out is None:
        base = model_path.parent / f"eval-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
        folder, n = base, 1
        while folder.exists():
            n += 1
            folder = base.with_name(f"{base.name}-{n}")
        return folder
    folder = Path(out)
    clear_outputs(
        folder,
        EVAL_OUTPUTS,
        overwrite=overwrite,
        refusal="evaluate output folder {folder} is not empty (it holds {held}...); pass --overwrite to replace the "
        "evaluate outputs there, or leave out --out (each evaluate then writes a new folder next to the model)",
    )
    return folder


def evaluate_model(
    model_path: str | os.PathLike,
    *,
    config: ExperimentConfig | None = None,
    split: str = "test",
    out: str | os.PathLike | None = None,
    data_path: str | os.PathLike | None = None,
    allow_overlap: bool = False,
    overwrite: bool = False,
) -> EvaluateReport:
    """``das-stream evaluate``: score a saved model on its recorded split, or on other data.

    Args:
        model_path: a model file written by ``train``.
        config: the experiment config; default the ``config.yaml`` saved next to the model.
        split: ``val`` or ``test`` (``train`` works too) of the split recorded in the model file
            (its data settings ``split``, ``split_seed`` and groups are not used).
        out: folder for ``eval-<split>.json``, ``predictions-<split>.csv``, ``confusion-<split>.*``
            and ``selection-<split>.png``; must be empty unless ``overwrite``; default a new folder
            ``eval-<split>-<time>`` next to the model.
        data_path: other data (a CSV index of videos, or a MedMNIST npz): every sample of it is
            scored, with the config's preprocessing. Refused when the model trained or validated
            on any of it (same content, or a patient group it saw) unless ``allow_overlap``.
    """
    model_path = Path(model_path)
    if config is None:
        config = load_config(run_config_path(model_path))
    set_threads(config)
    device = resolve_device(config.train.device)
    model = SampledClassifier.load(model_path, map_location=device)
    mc, recorded = model.config, model.meta.get("split")
    label = split if data_path is None else f"data-{Path(data_path).stem}"
    folder = eval_dir(model_path, out, label, overwrite=overwrite)
    lines = []  # logged once the checks passed and the folder exists
    if data_path is None:
        if recorded is None:
            lines.append(
                f"warning: {model_path} records no split (written before das-stream stored it); splitting the data "
                "again by the config's data.split and data.split_seed, which may not be the split it was trained on"
            )
        data = load_dataset(config.data, recorded=recorded)
        clips, data_config, class_names = data.split(split), config.data, data.class_names
        samples = [tuple(s) for s in (data.split_record or {}).get(split, [])]
        scored = (
            f"the {split} split recorded in {model_path} ({len(clips)} samples)"
            if recorded is not None
            else f"the {split} split of {config.source} made again"
        )
    else:
        data_config, clips, samples, notes = other_data(config, data_path, mc.class_names)
        class_names = tuple(mc.class_names)
        scored = f"every sample of {data_path} ({len(clips)})"
        lines += notes
    check_model_fits(model, config, clips, class_names, model_path)
    lines.insert(0, f"evaluate {model_path}: scoring {scored}")
    seen = _overlap(config, recorded, samples, data_config)
    counts = {k: len(v) for k, v in seen.items()}
    if any(counts.values()):
        what = (
            f"{counts['train']} of the {len(samples)} samples are in the model's training split and {counts['val']} in "
            f"its validation split (same content), {counts['group']} more belong to a patient group it trained or "
            f"validated on ({', '.join((seen['train'] + seen['val'] + seen['group'])[:5])}"
            f"{', ...' if sum(counts.values()) > 5 else ''})"
        )
        if data_path is not None and not allow_overlap:
            raise DataError(
                f"{what}; scores on them would not be held-out scores. Pass --allow-overlap to score them anyway "
                "(the overlap is written to eval-*.json), or remove those rows"
            )
        why = "--allow-overlap" if data_path is not None else "copies in the data under other names, or patients"
        lines.append(f"warning: {what}; scoring them anyway ({why})")
    elif samples and recorded is not None:
        lines.append(
            f"none of the {len(samples)} samples is in the model's training or validation split (by content hash)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    log = RunLog(folder / "evaluate.log")
    for line in lines:
        log(line)
    weight = class_weights(_train_labels(model, class_names), len(class_names), config.train.class_weights)
    ev = evaluate(model, clips, device=device, batch_size=config.train.eval_batch_size, weight=weight)
    report = EvaluateReport(
        model=str(model_path),
        split=label,
        clips=len(clips),
        loss=ev.loss,
        auc=ev.scores.auc,
        acc=ev.scores.acc,
        unique_frames=ev.unique_frames,
        k=mc.k,
        num_frames=mc.num_frames,
        scored=scored,
        seen=counts,
        out=str(folder),
    )
    names = [f"eval-{label}.json", f"predictions-{label}.csv", f"selection-{label}.png"]
    names += [f"confusion-{label}.json", f"confusion-{label}.png"]
    if data_config.kind == "videos":  # video-level, as `das-stream run` sees a video (docs/protocol.md)
        level = _video_level(model, config, data_config, clips.names, device, folder / f"videos-{label}.json")
        report = dataclasses.replace(report, **level)
        names.append(f"videos-{label}.json")
    report = dataclasses.replace(report, files=tuple(str(folder / n) for n in names))
    (folder / f"eval-{label}.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    _write_predictions(ev, clips.names, class_names, folder / f"predictions-{label}.csv")
    title = f"{config.name} {mc.method} k={mc.k}/{mc.num_frames}, {scored}"
    plot_picks(ev, clips, class_names, folder / f"selection-{label}.png", title=title)
    confusion = per_class(ev.labels, ev.probs.argmax(axis=1), class_names)
    write_confusion(confusion, folder / f"confusion-{label}.json", folder / f"confusion-{label}.png", title=title)
    return report


def other_data(
    config: ExperimentConfig, path: str | os.PathLike, class_names: Sequence[str]
) -> tuple[DataConfig, ClipSet, list[tuple[str, str, str | None]], tuple[str, ...]]:
    """Every sample of other data (``evaluate --data``): its config (the CSV's paths relative to
    its own folder), its clips, their (name, content hash, group) and the notes on rows left out."""
    d = config.data
    other = dataclasses.replace(d, path=str(Path(path).expanduser().absolute()), root=None, classes=tuple(class_names))
    if d.kind == "videos":
        index = read_video_index(other, min_videos=0)
        return other, decode_clips(other, index), index.samples(), index.notes
    if d.kind == "medmnist3d":
        splits = load_medmnist3d(require_file(other, "dataset file"), class_names=class_names)
        names = tuple(f"{Path(path).name}:{n}" for s in SPLITS for n in splits.split(s).names)
        clips = ClipSet(
            np.concatenate([splits.split(s).x for s in SPLITS]),
            np.concatenate([splits.split(s).valid for s in SPLITS]),
            np.concatenate([splits.split(s).labels for s in SPLITS]),
            names,
        )
        return other, clips, [(n, array_digest(x), None) for n, x in zip(names, clips.x)], ()
    raise DataError(
        f"--data scores videos (a CSV) or MedMNIST volumes (an npz); this model was trained on {d.kind} data"
    )


def _overlap(
    config: ExperimentConfig, recorded: dict | None, samples: Sequence[tuple], data_config: DataConfig
) -> dict[str, list[str]]:
    """:func:`~.split.overlap` of ``samples`` with the recorded training and validation split;
    with a group setting in the config and none in the record, the recorded videos are grouped
    by the config's rule first."""
    if recorded is None:
        return {"train": [], "val": [], "group": []}
    if recorded.get("by") == "video" and config.data.groups:
        recorded = regroup(recorded, lambda names: groups_of_names(config.data, names))
    return overlap(recorded, samples)


def _train_labels(model: SampledClassifier, class_names: Sequence[str]) -> np.ndarray:
    """The training split's labels as the model file counts them (for the class-weighted loss)."""
    counts = ((model.meta.get("training") or {}).get("clips") or {}).get("train") or {}
    return np.repeat(np.arange(len(class_names)), [int(counts.get(c, 1)) for c in class_names])


def _video_level(
    model: SampledClassifier,
    config: ExperimentConfig,
    data_config: DataConfig,
    split_names: Sequence[str],
    device: Any,
    path: Path,
) -> dict[str, Any]:
    """Score the split's whole videos: windows of T, stride S as the runtime cuts them, a video's
    prediction the mean of its windows' probabilities; write them to ``path``."""
    from .video_eval import evaluate_videos, load_whole_videos

    whole = load_whole_videos(data_config, min_videos=0)
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


def check_model_fits(
    model: SampledClassifier, config: ExperimentConfig, clips: Clips, class_names: Sequence[str], model_path: Path
) -> None:
    """DataError in one line when the model was trained on other inputs than ``config`` gives."""
    mc = model.config
    if mc.num_frames != clips.num_frames or tuple(mc.class_names) != tuple(class_names):
        raise DataError(
            f"model {model_path} expects T={mc.num_frames} and classes {list(mc.class_names)}, but the data of "
            f"{config.source} has T={clips.num_frames} and classes {list(class_names)}; pass the config it was trained with"
        )
    check_input_size(model, config, int(clips.x.shape[-1]), model_path)


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
    data = load_dataset(config.data, recorded=model.meta.get("split"))  # the split it was trained on
    check_model_fits(model, config, data.split(split), data.class_names, model_path)
    rule = calibrate_clips(model, data.split(split), device=device, tolerance=tolerance)
    model.meta["exit"] = rule.to_dict()
    model.save(Path(out) if out is not None else model_path)
    return rule


def check_input_size(model: SampledClassifier, config: ExperimentConfig, size: int, model_path: Path) -> None:
    """Refuse a config whose input sizes (or recorded preprocessing) differ from the model's, as for T."""
    mc, m, pre = model.config, config.model, model.preprocessing
    mismatch = [
        f"{key}={ours} (model {theirs})"
        for key, ours, theirs in (
            ("model.input_size", m.input_size, mc.input_size),
            ("model.feature_size", m.feature_size, mc.feature_size),
            ("data.size", size, pre.get("size")),
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


SPLIT_FILE = "split.json"


def compare(
    config: ExperimentConfig,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
) -> list[SummaryRow]:
    """``das-stream compare``: every method x keep x seed of ``config.grid``, then the summary.

    Every run of one output folder uses one split: the first ``compare`` into it writes
    ``split.json`` (the split record, :mod:`.split`), later ones use it (checked by content
    hash). The summary covers every finished run in the folder, not only this call's grid.

    Args:
        config: the experiment; ``model.method``, ``model.keep`` and ``train.seed`` are replaced
            by the grid's values.
        out: folder for the run folders and the summary; default ``train.out/<name>``.
        resume: skip runs whose ``result.json`` exists and continue interrupted ones from their
            checkpoints (the grid takes hours).
    """
    threads = set_threads(config)
    out = Path(out) if out is not None else Path(config.train.out) / config.name
    if config.data.folds > 1:
        from .protocol.crossval import compare_folds

        return compare_folds(config, out=out, resume=resume)
    out.mkdir(parents=True, exist_ok=True)
    progress = RunLog(out / "compare.log")
    plan = grid(config)
    done = [r for r in plan if resume and (out / run_name(*r) / RESULT_FILE).is_file()]
    progress(
        f"compare {config.name}: {plan_words(config, len(plan))}; {len(done)} finished before (--resume), "
        f"{len(plan) - len(done)} to train with {threads} thread(s) each -> {out}"
    )
    clock = GridClock(len(plan) - len(done))
    data: DatasetSplits | None = None
    for i, (method, keep, seed) in enumerate(plan, start=1):
        run_dir = out / run_name(method, keep, seed)
        if (method, keep, seed) in done:
            progress(f"[{i}/{len(plan)}] {run_dir.name}: result exists, skipped (--resume)")
            if not (run_dir / CURVE_FILE).is_file():
                data = data if data is not None else _grid_data(config, out, progress)
                _write_curve(config, data, run_dir)
            continue
        if data is None:
            data = _grid_data(config, out, progress)
        progress(f"[{i}/{len(plan)}] {run_dir.name} ({clock.status()})")
        run_config = config.replace(model={"method": method, "keep": keep}, train={"seed": seed})
        with clock.timing():
            train_run(
                run_config,
                data,
                run_dir,
                resume=resume and (run_dir / CHECKPOINT_FILE).is_file(),
                strict_resume=False,
                notes=False,
            )
        _write_curve(run_config, data, run_dir)
    results = finished_results(out, "*", config.name)
    progress(
        f"compare: {clock.trained} run(s) trained, {len(done)} skipped (result existed, --resume) in "
        f"{duration(clock.elapsed)}; the summary covers the {len(results)} finished run(s) in {out}"
    )
    rows = summarize(results)
    write_summary_csv(rows, out / f"{config.name}.csv")
    (out / f"{config.name}.md").write_text(markdown_table(rows))
    plot_auc(rows, out / f"{config.name}-auc.png", title=f"{config.name}: test AUC (mean; ± std when n > 1 runs)")
    for path in write_curve_summaries(out, config.name):
        progress(f"curves: {path}")
    return rows


def _write_curve(run_config: ExperimentConfig, data: DatasetSplits, run_dir: Path) -> None:
    """``curve.json`` of one run on the fixed split: its test scores at every k of its order and
    at the early exit calibrated on the validation clips (video-level where clips are windows
    of videos), as ``compare --folds`` writes per run."""
    device = resolve_device(run_config.train.device)
    model = SampledClassifier.load(run_dir / MODEL_FILE, map_location=device)
    curve = run_curve(
        model,
        (data.val, windows_of_clips(data.val)),
        {"clean": (data.test, windows_of_clips(data.test))},
        device=device,
    )
    (run_dir / CURVE_FILE).write_text(json.dumps(curve, indent=1) + "\n")


def plan_words(config: ExperimentConfig, runs: int) -> str:
    """``18 runs (6 methods x 1 keep x 3 seeds; Full once per seed)``."""
    g = config.grid
    full = "; Full once per seed" if "full" in g.methods and len(g.keeps) > 1 else ""
    folds = f" x {config.data.folds} folds" if config.data.folds > 1 else ""
    return (
        f"{runs} runs ({len(g.methods)} method(s) x {len(g.keeps)} keep(s) x {len(g.seeds)} seed(s){folds}{full}; "
        f"at most {config.train.epochs} epochs each)"
    )


def _grid_data(config: ExperimentConfig, out: Path, progress: RunLog) -> DatasetSplits:
    """The grid's data, split as ``out/split.json`` records (written by the first compare)."""
    path = out / SPLIT_FILE
    recorded = json.loads(path.read_text()) if path.is_file() else None
    data = load_dataset(config.data, recorded=recorded)
    if recorded is not None:
        progress(
            f"split: the one recorded in {path} by the first compare into this folder ({split_summary(recorded)}); "
            "the config's data.split, split_seed and group settings are not used (a new --out makes a new split)"
        )
    elif data.split_record is not None:
        path.write_text(json.dumps(data.split_record) + "\n")
    for note in (*data.notes, *data_notes(config, data)):
        progress(note)
    return data


def finished_results(out: Path, pattern: str, dataset: str) -> list[RunResult]:
    """Every ``result.json`` under ``out/<pattern>/`` of ``dataset``, in path order."""
    results = [RunResult.load(p) for p in sorted(out.glob(f"{pattern}/{RESULT_FILE}"))]
    return [r for r in results if r.dataset == dataset]


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
