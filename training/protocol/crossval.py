"""``das-stream compare --folds K``: the grid of methods x keeps x seeds on every fold.

Splits (see :mod:`.folds`): stratified K-fold, group-aware when ``data.group_column`` or
``data.group_regex`` is set; each fold's validation set is carved out of its training folds.

- **Videos** (``data.kind: videos``): every video is decoded whole (resampled to ``data.fps``
  and ``data.size``, at most ``data.max_frames`` frames) and cached. Training clips are windows
  of T frames: the first window of each video (``data.train_windows: first``), one window drawn
  from anywhere in the video every time the video is visited (``random``), or every runtime
  window (``all``). Validation uses every runtime window of the validation videos (window-level
  loss, for early stopping). The test score is **video-level**: every runtime window (T, stride
  ``data.window_stride``, default T) is classified and a video's probabilities are the mean of
  its windows' (:func:`.video_eval.evaluate_videos`); the window-level test score is kept too.
- **MedMNIST** (``medmnist3d``): each volume is one clip. ``data.fold_test: merge`` pools the
  official train, val and test splits and folds them all; ``official`` keeps the official test
  split as every fold's test set and folds only train + val (fold f validates on part f).

With ``data.corruption: test`` every model is also scored on corrupted test videos
(:mod:`.corruptions`, seeded per video, identical for every method); ``both`` also trains and
validates on corrupted data. Results: ``fold<f>/<run>/result.json`` (clean test) and
``result-corrupted.json``; summaries ``<name>.csv``/``.md`` and ``<name>-paired.csv`` (and the
same with ``-corrupted``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import DataError
from sampler.device import resolve_device
from sampler.model import SampledClassifier

from ..clips import ClipSet, DatasetSplits, cut_windows, windows_of_videos
from ..config import DataConfig, ExperimentConfig
from ..corruptions import StreamCorruption, corrupt_videos
from ..datasets import load_medmnist3d
from ..exits import Windows
from ..loop import evaluate
from ..report import RunResult, SummaryRow, markdown_table, plot_auc, summarize
from ..runs import MODEL_FILE, RESULT_FILE, RunLog, grid, run_name, set_threads, train_run
from ..video_eval import RandomWindowSet, evaluate_videos, load_whole_videos
from .curves import CURVE_FILE, run_curve, write_curve_summaries
from .folds import fold_splits, groups_from_regex
from .frozen import FrozenVideos, embedded_windows, evaluate_embedded_videos
from .paired import paired_markdown, paired_table, write_paired_csv, write_summary_with_diffs

CORRUPTED_RESULT = "result-corrupted.json"


# --- training windows ----------------------------------------------------------------------------


def _groups(config: DataConfig, names: Sequence[str]) -> np.ndarray:
    if config.group_regex:
        return groups_from_regex(names, config.group_regex)
    if config.group_column:
        with Path(config.path).expanduser().open(newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and config.group_column not in rows[0]:
            raise DataError(f"video index {config.path} has no column {config.group_column!r}; fix data.group_column")
        by_name = {(r[config.path_column] or "").strip(): (r[config.group_column] or "").strip() for r in rows}
        return np.array([by_name.get(n) or f"<{n}>" for n in names], dtype=object)
    return np.array([f"<{n}>" for n in names], dtype=object)


def _train_clips(config: ExperimentConfig, videos, labels, names, corruption: StreamCorruption | None):
    d, t = config.data, config.data.num_frames
    if d.train_windows == "random":
        return RandomWindowSet(videos, labels, names, t, seed=config.train.seed, corruption=corruption)
    if corruption is not None:
        videos = corrupt_videos(videos, corruption, seed=d.corruption_seed + 1)
    if d.train_windows == "all":
        return windows_of_videos(videos, labels, names, t, _stride(config))[0]
    first = [cut_windows(v[:t], t, t) for v in videos]
    return ClipSet(
        np.stack([f[0][0] for f in first]), np.stack([f[1][0] for f in first]), np.asarray(labels), tuple(names)
    )


def _stride(config: ExperimentConfig) -> int:
    return config.data.window_stride or config.data.num_frames


# --- the grid over folds ---------------------------------------------------------------------


def compare_folds(config: ExperimentConfig, *, out: Path, resume: bool = False) -> list[SummaryRow]:
    """Run the grid on every fold; write the summaries with paired differences."""
    set_threads(config)
    out.mkdir(parents=True, exist_ok=True)
    progress = RunLog(out / "compare.log")
    d = config.data
    corruption = StreamCorruption.from_options(d.corruption_options) if d.corruption != "none" else None
    start = time.perf_counter()
    vs = pool = base = None
    if d.kind == "videos":
        vs = load_whole_videos(d)
        labels, groups, class_names = vs.labels, _groups(d, vs.names), vs.class_names
        splits = fold_splits(
            labels, folds=d.folds, seed=d.split_seed, groups=groups, val_fraction=d.split[1] / (d.split[0] + d.split[1])
        )
        progress(
            f"{d.folds} folds over {len(labels)} videos in {len(set(groups.tolist()))} groups; video-level test, "
            f"T={d.num_frames} stride={_stride(config)} train_windows={d.train_windows} corruption={d.corruption}"
        )
        frozen = (
            FrozenVideos(config, vs, corruption, progress, resolve_device(config.train.device))
            if config.train.freeze_backbone
            else None
        )
    else:
        frozen = None
        base = load_medmnist3d(d.path, class_names=d.classes) if d.kind == "medmnist3d" else None
        if base is None:
            raise DataError(
                f"--folds needs data.kind videos or medmnist3d, got {d.kind}; drop --folds for synthetic data"
            )
        splits, pool = _medmnist_folds(base, d)
        progress(f"{d.folds} folds over {len(pool.labels)} volumes (fold_test={d.fold_test})")
    plan = grid(config)
    results: list[RunResult] = []
    corrupted: list[RunResult] = []
    total = len(plan) * len(splits)
    i = 0
    for f, (tr, va, te) in enumerate(splits):
        data = None
        for method, keep, seed in plan:
            i += 1
            run_dir = out / f"fold{f}" / run_name(method, keep, seed)
            if resume and (run_dir / RESULT_FILE).is_file():
                r = RunResult.load(run_dir / RESULT_FILE)
                if r.fold == f and (corruption is None or (run_dir / CORRUPTED_RESULT).is_file()):
                    progress(f"[{i}/{total}] fold{f}/{run_dir.name}: result exists, skipped (--resume)")
                    results.append(r)
                    if corruption is not None:
                        corrupted.append(RunResult.load(run_dir / CORRUPTED_RESULT))
                    if not (run_dir / CURVE_FILE).is_file():
                        _write_curve(
                            config.replace(model={"method": method, "keep": keep}, train={"seed": seed}),
                            run_dir,
                            (frozen, vs, pool),
                            (tr, va, te),
                            corruption,
                            base,
                        )
                    continue
            progress(f"[{i}/{total}] fold{f}/{run_dir.name} (after {(time.perf_counter() - start) / 60:.1f} min)")
            run_config = config.replace(model={"method": method, "keep": keep}, train={"seed": seed})
            if d.kind == "videos" and frozen is not None:
                r, corr = _frozen_run(run_config, frozen, (tr, va, te), class_names, run_dir, f)
                if corr is not None:
                    corrupted.append(corr)
            elif d.kind == "videos":
                train_v = vs.take(tr)
                val_v, test_v = vs.take(va), vs.take(te)
                train_corr = corruption if d.corruption == "both" else None
                if train_corr is not None:
                    val_v = (
                        corrupt_videos(val_v[0], corruption, seed=d.corruption_seed + 2, ids=va.tolist()),
                        *val_v[1:],
                    )
                data = DatasetSplits(
                    _train_clips(run_config, *train_v, train_corr),
                    windows_of_videos(*val_v, d.num_frames, _stride(config))[0],
                    windows_of_videos(*test_v, d.num_frames, _stride(config))[0],
                    class_names=class_names,
                )
                r = train_run(run_config, data, run_dir)
                model = SampledClassifier.load(run_dir / MODEL_FILE, map_location=resolve_device(config.train.device))
                ev = _video_eval(model, test_v, run_config)
                r = dataclasses.replace(r, fold=f, test=ev.scores, window_test=ev.window_scores)
                _write_video_predictions(run_dir / "video-predictions-test.csv", test_v[2], ev, class_names)
                if corruption is not None:
                    bad = corrupt_videos(test_v[0], corruption, seed=d.corruption_seed, ids=te.tolist())
                    evc = _video_eval(model, (bad, *test_v[1:]), run_config)
                    rc = dataclasses.replace(r, test=evc.scores, window_test=evc.window_scores)
                    rc.save(run_dir / CORRUPTED_RESULT)
                    corrupted.append(rc)
            else:
                data = data or DatasetSplits(
                    pool.subset(tr), pool.subset(va), pool.subset(te) if te is not None else base.test, base.class_names
                )
                r = dataclasses.replace(train_run(run_config, data, run_dir), fold=f)
                if corruption is not None:
                    device = resolve_device(config.train.device)
                    model = SampledClassifier.load(run_dir / MODEL_FILE, map_location=device)
                    bad = corrupt_videos(list(data.test.x), corruption, seed=d.corruption_seed)
                    ev = evaluate(
                        model,
                        ClipSet(np.stack(bad), data.test.valid, data.test.labels, data.test.names),
                        device=device,
                        batch_size=config.train.eval_batch_size,
                    )
                    rc = dataclasses.replace(r, test=ev.scores)
                    rc.save(run_dir / CORRUPTED_RESULT)
                    corrupted.append(rc)
            r.save(run_dir / RESULT_FILE)
            results.append(r)
            _write_curve(run_config, run_dir, (frozen, vs, pool), (tr, va, te), corruption, base)
    progress(
        f"compare --folds {d.folds}: {total} runs done in {(time.perf_counter() - start) / 60:.1f} min of wall-clock time"
    )
    rows = _write_summaries(config, results, out, suffix="", progress=progress)
    if corrupted:
        _write_summaries(config, corrupted, out, suffix="-corrupted", progress=progress)
    for path in write_curve_summaries(out, config.name):
        progress(f"curves: {path}")
    return rows


def _write_curve(run_config: ExperimentConfig, run_dir: Path, inputs, split, corruption, base) -> None:
    """``curve.json`` of one run: its scores at every k of its order and at the early exit
    calibrated on its validation windows (:mod:`.curves`), on the clean and corrupted test sets."""
    frozen, vs, pool = inputs
    tr, va, te = split
    d, t = run_config.data, run_config.data.num_frames
    stride = _stride(run_config)
    device = resolve_device(run_config.train.device)
    model = SampledClassifier.load(run_dir / MODEL_FILE, map_location=device)

    def video_windows(videos, labels, names):
        clips, owner = windows_of_videos(videos, labels, names, t, stride)
        return clips, Windows(owner, np.asarray(labels))

    def embedded(ev):
        clips, owner = embedded_windows(ev, t, stride)
        return clips, Windows(owner, np.asarray(ev.labels))

    def volumes(clips):
        return clips, Windows(np.arange(len(clips)), np.asarray(clips.labels))

    tests = {}
    if frozen is not None:
        val = embedded((frozen.train_bad or frozen.clean).take(va))
        tests["clean"] = embedded(frozen.clean.take(te))
        if frozen.test_bad is not None:
            tests["corrupted"] = embedded(frozen.test_bad.take(te))
    elif vs is not None:
        val_v = vs.take(va)
        if corruption is not None and d.corruption == "both":
            val_v = (corrupt_videos(val_v[0], corruption, seed=d.corruption_seed + 2, ids=va.tolist()), *val_v[1:])
        val = video_windows(*val_v)
        test_v = vs.take(te)
        tests["clean"] = video_windows(*test_v)
        if corruption is not None:
            bad = corrupt_videos(test_v[0], corruption, seed=d.corruption_seed, ids=te.tolist())
            tests["corrupted"] = video_windows(bad, *test_v[1:])
    else:
        val = volumes(pool.subset(va))
        test = pool.subset(te) if te is not None else base.test
        tests["clean"] = volumes(test)
        if corruption is not None:
            bad = corrupt_videos(list(test.x), corruption, seed=d.corruption_seed)
            tests["corrupted"] = volumes(ClipSet(np.stack(bad), test.valid, test.labels, test.names))
    curve = run_curve(model, val, tests, device=device)
    (run_dir / CURVE_FILE).write_text(json.dumps(curve, indent=1) + "\n")


def _frozen_run(run_config: ExperimentConfig, frozen: FrozenVideos, split, class_names, run_dir: Path, fold: int):
    """One run with a frozen backbone: train on the embedded windows, score the test videos
    (clean and, when configured, corrupted) at video level."""
    tr, va, te = split
    r = train_run(
        run_config,
        frozen.splits(run_config, tr, va, te, class_names),
        run_dir,
        backbone=(frozen.backbone, frozen.weights_source),
    )
    model = SampledClassifier.load(run_dir / MODEL_FILE, map_location=resolve_device(run_config.train.device))
    stride, corr = _stride(run_config), None
    for variant in (frozen.clean, frozen.test_bad):
        if variant is None:
            continue
        test = variant.take(te)
        ev = evaluate_embedded_videos(
            model,
            test,
            window=run_config.data.num_frames,
            stride=stride,
            device=resolve_device(run_config.train.device),
            batch_size=run_config.train.eval_batch_size,
        )
        scored = dataclasses.replace(r, fold=fold, test=ev.scores, window_test=ev.window_scores)
        if variant is frozen.clean:
            r = scored
            _write_video_predictions(run_dir / "video-predictions-test.csv", test.names, ev, class_names)
        else:
            corr = scored
            corr.save(run_dir / CORRUPTED_RESULT)
    return r, corr


def _video_eval(model, videos_labels_names, config: ExperimentConfig):
    videos, labels, names = videos_labels_names
    return evaluate_videos(
        model,
        videos,
        labels,
        window=config.data.num_frames,
        stride=_stride(config),
        device=resolve_device(config.train.device),
        batch_size=config.train.eval_batch_size,
        names=names,
    )


def _write_video_predictions(path: Path, names: Sequence[str], ev, class_names) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "label", "predicted", "windows", *(f"p_{c}" for c in class_names)])
        for name, label, probs, n in zip(names, ev.labels, ev.probs, ev.windows_per_video):
            w.writerow(
                [name, class_names[label], class_names[int(probs.argmax())], int(n), *(f"{p:.4f}" for p in probs)]
            )


def _medmnist_folds(base: DatasetSplits, d: DataConfig):
    def cat(*sets: ClipSet) -> ClipSet:
        return ClipSet(
            np.concatenate([s.x for s in sets]),
            np.concatenate([s.valid for s in sets]),
            np.concatenate([s.labels for s in sets]),
            tuple(n for s in sets for n in s.names),
        )

    vf = d.split[1] / (d.split[0] + d.split[1])
    if d.fold_test == "merge":
        pool = cat(base.train, base.val, base.test)
        return fold_splits(pool.labels, folds=d.folds, seed=d.split_seed, val_fraction=vf), pool
    pool = cat(base.train, base.val)
    folds = fold_splits(pool.labels, folds=d.folds, seed=d.split_seed, val_fraction=vf)
    # official test: fold f trains on the other folds and validates on fold f
    return [(np.sort(np.concatenate([tr, va])), te, None) for tr, va, te in folds], pool


def _write_summaries(
    config: ExperimentConfig, results: list[RunResult], out: Path, *, suffix: str, progress
) -> list[SummaryRow]:
    rows = summarize(results)
    diffs = paired_table(results)
    name = f"{config.name}{suffix}"
    write_summary_with_diffs(rows, results, out / f"{name}.csv")
    write_paired_csv(diffs, out / f"{name}-paired.csv")
    level = (
        "video-level"
        if config.data.kind == "videos"
        else (
            "clip-level, official splits merged before folding"
            if config.data.fold_test == "merge"
            else "clip-level, official test split kept as every fold's test set"
        )
    )
    text = (
        f"{config.data.folds}-fold cross-validation, {level} test scores{' (corrupted test)' if suffix else ''}; "
        f"mean ± std over folds x seeds.\n\n" + markdown_table(rows) + "\nPaired differences (same fold and seed), "
        "mean and 95% percentile bootstrap interval:\n\n" + paired_markdown(diffs)
    )
    (out / f"{name}.md").write_text(text)
    plot_auc(rows, out / f"{name}-auc.png", title=f"{name}: test AUC ({config.data.folds} folds)")
    progress(text)
    return rows
