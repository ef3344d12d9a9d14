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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import DataError
from sampler.device import resolve_device
from sampler.model import SampledClassifier

from ..card import duration
from ..checkpoint import CHECKPOINT_FILE
from ..clips import Clips, ClipSet, DatasetSplits, cut_windows, windows_of_videos
from ..config import DataConfig, ExperimentConfig
from ..corruptions import StreamCorruption, corrupt_videos
from ..datasets import clip_record, load_medmnist3d, record_mismatch, require_file
from ..exits import Windows
from ..loop import evaluate
from ..report import RunResult, SummaryRow, markdown_table, plot_auc, summarize
from ..runs import MODEL_FILE, RESULT_FILE, GridClock, RunLog, grid, resize_note, run_name, set_threads, train_run
from ..split import BY_VIDEO_NOTE, fold_splits, parts_from_record, split_record
from ..video_eval import RandomWindowSet, VideoSet, evaluate_videos, load_whole_videos
from .curves import CURVE_FILE, run_curve, write_curve_summaries
from .frozen import FrozenVideos, embedded_windows, evaluate_embedded_videos
from .paired import paired_markdown, paired_table, write_paired_csv, write_summary_with_diffs

CORRUPTED_RESULT = "result-corrupted.json"
FOLDS_FILE = "folds.json"  # the folds of every run in the output folder (training.split records)


# --- training windows ----------------------------------------------------------------------------


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
    """Run the grid on every fold; write the summaries with paired differences.

    The folds are recorded in ``out/folds.json`` by the first call; later calls into the same
    folder use them (videos: checked by content hash; volumes: refused when they differ).
    ``resume`` skips finished runs and continues interrupted ones from their checkpoints. The
    summaries cover every finished run in ``out``."""
    threads = set_threads(config)
    out.mkdir(parents=True, exist_ok=True)
    progress = RunLog(out / "compare.log")
    d = config.data
    corruption = StreamCorruption.from_options(d.corruption_options) if d.corruption != "none" else None
    recorded = json.loads((out / FOLDS_FILE).read_text()) if (out / FOLDS_FILE).is_file() else None
    vs = pool = base = None
    if d.kind == "videos":
        vs = load_whole_videos(d)
        labels, class_names = vs.labels, vs.class_names
        splits = _video_folds(config, vs, recorded)
        records = [_fold_record(d, vs, parts) for parts in splits]
        progress(
            f"{d.folds} folds over {len(labels)} videos in {len(set(vs.groups.tolist()))} groups; video-level test, "
            f"T={d.num_frames} stride={_stride(config)} train_windows={d.train_windows} corruption={d.corruption}"
        )
        notes = [*(vs.index.notes if vs.index else ()), *(() if d.groups else (BY_VIDEO_NOTE,))]
        for note in (*notes, *resize_note(config, d.size)):
            progress(note)
        frozen = (
            FrozenVideos(config, vs, corruption, progress, resolve_device(config.train.device))
            if config.train.freeze_backbone
            else None
        )
    else:
        frozen = None
        base = (
            load_medmnist3d(require_file(d, "dataset file"), class_names=d.classes) if d.kind == "medmnist3d" else None
        )
        if base is None:
            raise DataError(
                f"--folds needs data.kind videos or medmnist3d, got {d.kind}; drop --folds for synthetic data"
            )
        splits, pool = _medmnist_folds(base, d)
        records = [
            clip_record(
                DatasetSplits(
                    pool.subset(tr), pool.subset(va), pool.subset(te) if te is not None else base.test, base.class_names
                )
            )
            for tr, va, te in splits
        ]
        if recorded is not None:
            differ = [
                f
                for f, r in enumerate(records)
                if f >= len(recorded["folds"]) or record_mismatch(recorded["folds"][f], r)
            ]
            if differ or len(records) != len(recorded["folds"]):
                raise DataError(
                    f"the folds differ from those recorded in {out / FOLDS_FILE} (fold {differ[0] if differ else len(records)}): "
                    "other data, data.folds, data.split_seed or data.fold_test; use a new --out for new folds"
                )
        progress(f"{d.folds} folds over {len(pool.labels)} volumes (fold_test={d.fold_test})")
        for note in resize_note(config, int(pool.x.shape[-1])):
            progress(note)
    if recorded is None:
        (out / FOLDS_FILE).write_text(json.dumps({"folds": records}) + "\n")
    else:
        progress(f"folds: the ones recorded in {out / FOLDS_FILE} by the first compare into this folder")
    plan = grid(config)
    total = len(plan) * len(splits)
    done = {
        (f, *run): _finished(out / f"fold{f}" / run_name(*run), f, corruption is not None)
        for f in range(len(splits))
        for run in plan
        if resume
    }
    skipped = sum(bool(v) for v in done.values())
    progress(
        f"compare --folds {d.folds}: {total} runs ({len(plan)} per fold: {len(config.grid.methods)} method(s) x "
        f"{len(config.grid.keeps)} keep(s) x {len(config.grid.seeds)} seed(s)); {skipped} finished before (--resume), "
        f"{total - skipped} to train with {threads} thread(s) each -> {out}"
    )
    clock = GridClock(total - skipped)
    i = 0
    for f, (tr, va, te) in enumerate(splits):
        data = None
        for method, keep, seed in plan:
            i += 1
            run_dir = out / f"fold{f}" / run_name(method, keep, seed)
            if done.get((f, method, keep, seed)):
                progress(f"[{i}/{total}] fold{f}/{run_dir.name}: result exists, skipped (--resume)")
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
            progress(f"[{i}/{total}] fold{f}/{run_dir.name} ({clock.status()})")
            run_config = config.replace(model={"method": method, "keep": keep}, train={"seed": seed})
            resume_run = ResumeRun(resume and (run_dir / CHECKPOINT_FILE).is_file())
            with clock.timing():
                if d.kind == "videos" and frozen is not None:
                    r, _ = _frozen_run(
                        run_config, frozen, (tr, va, te), class_names, run_dir, f, records[f], resume_run
                    )
                elif d.kind == "videos":
                    assert vs is not None  # loaded above for videos
                    train_v = vs.take(tr)
                    val_v, test_v = vs.take(va), vs.take(te)
                    train_corr = corruption if d.corruption == "both" else None
                    if train_corr is not None:
                        val_v = (
                            corrupt_videos(val_v[0], train_corr, seed=d.corruption_seed + 2, ids=va.tolist()),
                            *val_v[1:],
                        )
                    data = DatasetSplits(
                        _train_clips(run_config, *train_v, train_corr),
                        windows_of_videos(*val_v, d.num_frames, _stride(config))[0],
                        windows_of_videos(*test_v, d.num_frames, _stride(config))[0],
                        class_names=class_names,
                        split_record=records[f],
                    )
                    r = train_run(run_config, data, run_dir, resume=resume_run.resume, strict_resume=False, notes=False)
                    model = SampledClassifier.load(
                        run_dir / MODEL_FILE, map_location=resolve_device(config.train.device)
                    )
                    ev = _video_eval(model, test_v, run_config)
                    r = dataclasses.replace(r, fold=f, test=ev.scores, window_test=ev.window_scores)
                    _write_video_predictions(run_dir / "video-predictions-test.csv", test_v[2], ev, class_names)
                    if corruption is not None:
                        bad = corrupt_videos(test_v[0], corruption, seed=d.corruption_seed, ids=te.tolist())
                        evc = _video_eval(model, (bad, *test_v[1:]), run_config)
                        rc = dataclasses.replace(r, test=evc.scores, window_test=evc.window_scores)
                        rc.save(run_dir / CORRUPTED_RESULT)
                else:
                    assert pool is not None and base is not None  # loaded above for medmnist3d
                    data = data or DatasetSplits(
                        pool.subset(tr),
                        pool.subset(va),
                        pool.subset(te) if te is not None else base.test,
                        base.class_names,
                        split_record=records[f],
                    )
                    r = dataclasses.replace(
                        train_run(
                            run_config, data, run_dir, resume=resume_run.resume, strict_resume=False, notes=False
                        ),
                        fold=f,
                    )
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
                r.save(run_dir / RESULT_FILE)
                _write_curve(run_config, run_dir, (frozen, vs, pool), (tr, va, te), corruption, base)
            if r.window_test is not None:  # the score the tables use, and the window-level one train_run logged
                progress(
                    f"[{i}/{total}] fold{f}/{run_dir.name}: video-level test auc {r.test.auc:.3f} balanced acc "
                    f"{r.test.acc:.1f}% (the score in the tables; window-level auc {r.window_test.auc:.3f})"
                )
    results = [r for r in _finished_runs(out, config.name, RESULT_FILE) if r.fold >= 0]
    progress(
        f"compare --folds {d.folds}: {clock.trained} run(s) trained, {skipped} skipped (result existed, --resume) in "
        f"{duration(clock.elapsed)}; the summaries cover the {len(results)} finished run(s) in {out}"
    )
    rows = _write_summaries(config, results, out, suffix="", progress=progress)
    corrupted = _finished_runs(out, config.name, CORRUPTED_RESULT) if corruption is not None else []
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


@dataclasses.dataclass(frozen=True)
class ResumeRun:
    """How a run of the grid starts: from its checkpoint (``resume``) or afresh; a checkpoint
    of another config is trained again from the start, and the data's notes are logged once."""

    resume: bool


def _finished(run_dir: Path, fold: int, corrupted: bool) -> bool:
    """Whether a run of ``fold`` finished (with its corrupted-test result when one is due)."""
    if not (run_dir / RESULT_FILE).is_file() or (corrupted and not (run_dir / CORRUPTED_RESULT).is_file()):
        return False
    return RunResult.load(run_dir / RESULT_FILE).fold == fold


def _finished_runs(out: Path, dataset: str, file: str) -> list[RunResult]:
    """Every finished run's result (``file``) under ``out/fold*/``, of ``dataset``."""
    results = [RunResult.load(p) for p in sorted(out.glob(f"fold*/*/{file}"))]
    return [r for r in results if r.dataset == dataset]


def _video_folds(
    config: ExperimentConfig, vs: VideoSet, recorded: dict | None
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The folds recorded in the output folder (checked by content hash), else new ones."""
    d = config.data
    if recorded is not None:
        assert vs.index is not None
        digests = [e.digest for e in vs.index.entries]
        return [parts_from_record(r, vs.names, digests, where=str(d.file)) for r in recorded["folds"]]
    return fold_splits(
        vs.labels,
        folds=d.folds,
        seed=d.split_seed,
        groups=vs.groups,
        val_fraction=d.split[1] / (d.split[0] + d.split[1]),
    )


def _fold_record(d: DataConfig, vs: VideoSet, parts: Sequence[np.ndarray]) -> dict:
    assert vs.index is not None
    return split_record(
        d.groups or "video",
        {s: vs.index.samples(p) for s, p in zip(("train", "val", "test"), parts)},
        root=str(d.video_root.absolute()),
    )


def _frozen_run(
    run_config: ExperimentConfig, frozen: FrozenVideos, split, class_names, run_dir: Path, fold: int, record, resume_run
):
    """One run with a frozen backbone: train on the embedded windows, score the test videos
    (clean and, when configured, corrupted) at video level."""
    tr, va, te = split
    r = train_run(
        run_config,
        dataclasses.replace(frozen.splits(run_config, tr, va, te, class_names), split_record=record),
        run_dir,
        backbone=(frozen.backbone, frozen.weights_source),
        resume=resume_run.resume,
        strict_resume=False,
        notes=False,
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
    def cat(*sets: Clips) -> ClipSet:
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
    split = f"grouped by {config.data.groups}" if config.data.groups else "by video, not by patient"
    split = split if config.data.kind == "videos" else "by volume"
    text = (
        f"{config.data.folds}-fold cross-validation ({split}), {level} test scores"
        f"{' (corrupted test)' if suffix else ''}; mean ± std over the n runs (folds x seeds).\n\n"
        + markdown_table(rows, over="folds x seeds")
        + "\nPaired differences (same fold and seed), mean and 95% percentile bootstrap interval:\n\n"
        + paired_markdown(diffs)
    )
    (out / f"{name}.md").write_text(text)
    plot_auc(rows, out / f"{name}-auc.png", title=f"{name}: test AUC ({config.data.folds} folds)")
    progress(text)
    return rows
