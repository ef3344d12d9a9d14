"""Datasets for training and evaluation, preloaded into memory.

Every sample is a clip of T frames: ``x`` uint8 (T, 1, H, W), ``valid`` bool (T,) (False for the
empty frames that pad a short video) and an integer label. The model gets ``x`` as float / 255.

Three sources, chosen by ``DataConfig.kind``:

- ``medmnist3d``: the official MedMNIST 3D npz (keys ``{train,val,test}_{images,labels}``,
  images uint8 (N, D, H, W), labels (N, 1)); each volume is a sequence of D slices.
- ``videos``: a CSV (video path, class) and a folder. Every video is decoded once with PyAV,
  resampled to one frame rate and size, optionally cropped/trimmed, fitted to T frames and cached
  as npz under ``cache_dir``; the split is by video (or by patient group), stratified, with a
  fixed seed, or the split a model file recorded (:mod:`.split`).
- ``synthetic``: clips from ``sources.synthetic.make_clip`` (for the demo model and tests), or
  with ``synthetic_video_frames`` the windows the runtime cuts from a ``synthetic:`` stream.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import DataError, SourceError
from sources.synthetic import CLASSES as SYNTHETIC_CLASSES
from sources.synthetic import make_clip
from sources.video import read_video

from .clips import SPLITS, ClipSet, DatasetSplits, windows_of_videos
from .config import DataConfig
from .files import write_atomic
from .labels import csv_labels_hint, left_out_note, unknown_labels_error
from .split import (
    BY_VIDEO_NOTE,
    array_digest,
    file_digest,
    grouped_split,
    groups_from_regex,
    parts_from_record,
    split_record,
)

CACHE_VERSION = 2  # 2: resampled by core.resample (frames repeat only with data.upsample)


def load_dataset(config: DataConfig, *, recorded: dict | None = None) -> DatasetSplits:
    """Load (or build) the three splits a config describes; ``recorded`` (a model file's
    ``meta["split"]``) replaces the split of videos and is checked against the others'."""
    if config.kind == "medmnist3d":
        data = load_medmnist3d(require_file(config, "dataset file"), class_names=config.classes)
    elif config.kind == "videos":
        return load_video_dataset(config, recorded=recorded)
    else:
        data = make_synthetic_dataset(config)
    record = clip_record(data)
    if recorded is not None:
        differ = record_mismatch(recorded, record)
        if differ:
            raise DataError(
                f"the {' and '.join(differ)} clips of {config.file if config.path else config.kind + ' data'} are not "
                "those recorded in the model file (other file, or other data settings such as data.split_seed); "
                "evaluate with the config it was trained with, or score other data with --data"
            )
    return dataclasses.replace(data, split_record=record)


def clip_record(data: DatasetSplits) -> dict:
    """The split record of clips without files (volumes, generated clips): names and frame hashes."""
    return split_record(
        "sample",
        {s: [(n, array_digest(x), None) for n, x in zip(data.split(s).names, data.split(s).x)] for s in SPLITS},
    )


def record_mismatch(recorded: dict, record: dict) -> list[str]:
    """The splits whose samples (names and hashes) differ between two records."""
    return [
        s
        for s in SPLITS
        if sorted((n, d) for n, d, *_ in recorded.get(s) or []) != sorted((n, d) for n, d, *_ in record[s])
    ]


def require_file(config: DataConfig, what: str) -> Path:
    """``data.path`` resolved, or a one-line DataError: where it was looked for, by which rule,
    and how to get the data (``data.origin``)."""
    path = config.file
    if path.is_file():
        return path
    if not Path(config.path).expanduser().is_absolute():
        base = f"data.root {config.root}" if config.root else "the working directory"
        rule = (
            f" (looked for {path.absolute()}: data.path {config.path!r} is relative to {base}, "
            "not to the config file's folder)"
        )
    else:
        rule = ""
    if config.origin:
        fix = (
            f"this config's data: {config.origin}; get it, then point data.root at its folder "
            "(--set data.root=FOLDER; the bundled configs take it from DAS_STREAM_DATA)"
        )
    elif config.kind == "medmnist3d":
        fix = "set data.path to a MedMNIST 3D npz (e.g. adrenalmnist3d.npz)"
    else:
        fix = f"set data.path to a CSV with columns {config.path_column},{config.label_column}"
    raise DataError(f"{what} {path} not found{rule}; {fix}")


# --- MedMNIST 3D ---------------------------------------------------------------------------


def load_medmnist3d(path: str | os.PathLike, *, class_names: Sequence[str] | None = None) -> DatasetSplits:
    """Read an official MedMNIST 3D npz (any size); each volume becomes a clip of D slices.

    Args:
        path: the npz file (as the ``medmnist`` package downloads it).
        class_names: names for labels 0..C-1; default "0", "1", ...

    Raises:
        DataError: missing/corrupt file, missing keys, wrong shapes or dtypes, or label sets that
            differ between splits.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"dataset file {path} not found; set data.path to a MedMNIST 3D npz (e.g. adrenalmnist3d.npz)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            wanted = [f"{s}_{part}" for s in SPLITS for part in ("images", "labels")]
            missing = [k for k in wanted if k not in keys]
            if missing:
                raise DataError(
                    f"npz {path} lacks keys {', '.join(missing)}; expected the official MedMNIST layout "
                    f"with {', '.join(wanted)}"
                )
            arrays = {k: npz[k] for k in wanted}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"dataset file {path} is not a readable npz ({exc}); re-download it") from None

    clips = {s: _volumes_to_clips(path, s, arrays[f"{s}_images"], arrays[f"{s}_labels"]) for s in SPLITS}
    label_sets = {s: sorted(np.unique(c.labels).tolist()) for s, c in clips.items()}
    for s in ("val", "test"):
        if label_sets[s] != label_sets["train"]:
            raise DataError(
                f"npz {path}: labels in {s}_labels {label_sets[s]} differ from train_labels {label_sets['train']}; "
                "every split must hold the same classes"
            )
    num_classes = int(max(label_sets["train"])) + 1
    names = _class_names(class_names, num_classes, path)
    return DatasetSplits(clips["train"], clips["val"], clips["test"], class_names=names)


def _volumes_to_clips(path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> ClipSet:
    if images.ndim == 5 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 4:
        raise DataError(
            f"npz {path}: {split}_images has shape {images.shape}; expected (N, D, H, W) volumes (a 3D MedMNIST file)"
        )
    if images.dtype != np.uint8:
        raise DataError(f"npz {path}: {split}_images is {images.dtype}; expected uint8 images in 0..255")
    labels = np.asarray(labels).reshape(len(labels), -1)
    if labels.shape[1] != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"npz {path}: {split}_labels has shape {labels.shape} ({labels.dtype}); expected one integer "
            f"label per volume, (N, 1) with N = {len(images)}"
        )
    labels = labels[:, 0].astype(np.int64)
    if labels.min(initial=0) < 0:
        raise DataError(f"npz {path}: {split}_labels has negative labels; expected class indices 0..C-1")
    valid = np.ones(images.shape[:2], dtype=bool)
    names = tuple(f"{split}/{i}" for i in range(len(labels)))
    return ClipSet(np.ascontiguousarray(images), valid, labels, names)


def _class_names(given: Sequence[str] | None, num_classes: int, path: Path) -> tuple[str, ...]:
    if given is None:
        return tuple(str(i) for i in range(num_classes))
    if len(given) != num_classes:
        raise DataError(
            f"data.classes names {len(given)} classes but {path} has {num_classes}; list one name per label"
        )
    return tuple(given)


# --- videos --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoEntry:
    """One usable row of the CSV index; ``group`` is its patient (None without a group setting)."""

    row: int
    name: str
    path: Path
    label: str
    crop: tuple[int, int, int] | None
    trim: tuple[int, int] | None
    group: str | None = None

    @property
    def digest(self) -> str:
        return file_digest(self.path)


@dataclass(frozen=True)
class VideoIndex:
    """The usable rows of a CSV index, the class names (label order) and what reading left out."""

    entries: list[VideoEntry]
    class_names: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def samples(self, index: Sequence[int] | np.ndarray | None = None) -> list[tuple[str, str, str | None]]:
        """(name, content hash, group) of the entries (all, or those at ``index``)."""
        chosen = self.entries if index is None else [self.entries[i] for i in index]
        return [(e.name, e.digest, e.group) for e in chosen]


def load_video_dataset(config: DataConfig, *, recorded: dict | None = None) -> DatasetSplits:
    """Decode (or read from the cache) every video of the index and split them: by group when
    ``data.group_column``/``group_regex`` is set, else by video, or as ``recorded`` says (a
    model file's split, checked by content hash).

    Raises:
        DataError: missing CSV or columns, rows naming missing or unreadable videos or unknown
            labels, a class with too few videos (or groups) to appear in every split, a bad crop
            file, a recorded video that is missing or changed.
    """
    index = read_video_index(config)
    entries, class_names = index.entries, index.class_names
    everything = decode_clips(config, index)
    labels = everything.labels
    notes = list(index.notes)
    parts: tuple[np.ndarray, ...]
    if recorded is not None:
        parts = parts_from_record(recorded, everything.names, [e.digest for e in entries], where=str(config.file))
    elif config.groups:
        parts = grouped_split(
            labels, np.array([e.group for e in entries], dtype=object), fractions=config.split, seed=config.split_seed
        )
    else:
        parts = stratified_split(labels, fractions=config.split, seed=config.split_seed)
        notes.append(BY_VIDEO_NOTE)
    if recorded is None:
        notes += duplicate_notes(index, parts)
    record = split_record(
        (recorded or {}).get("by") or config.groups or "video",
        {s: index.samples(p) for s, p in zip(SPLITS, parts)},
        root=str(config.video_root.absolute()),
    )
    train, val, test = (everything.subset(p) for p in parts)
    return DatasetSplits(train, val, test, class_names=class_names, notes=tuple(notes), split_record=record)


def duplicate_notes(index: VideoIndex, parts: Sequence[np.ndarray]) -> list[str]:
    """A ``warning:`` line when files of identical content sit in two splits (a copy of a training
    video in test is not held out)."""
    first: dict[str, tuple[str, str]] = {}
    pairs = []
    for split, part in zip(SPLITS, parts):
        for name, digest, _ in index.samples(part):
            if digest in first and first[digest][1] != split:
                pairs.append(f"{name} ({split}) = {first[digest][0]} ({first[digest][1]})")
            first.setdefault(digest, (name, split))
    if not pairs:
        return []
    return [
        f"warning: {len(pairs)} video(s) have the same content as a video in another split: {_list(pairs, 3)}; "
        "those are not held out: remove the copies from the CSV, or give copies one group (data.group_column)"
    ]


def decode_clips(config: DataConfig, index: VideoIndex) -> ClipSet:
    """Every video of the index as one clip of T frames (decoded once, then read from the cache)."""
    entries = index.entries
    cache = _cache_path(config, entries)
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            x, valid = npz["x"], npz["valid"]
    else:
        clips = [decode_entry(e, config) for e in entries]
        x = np.stack([c[0] for c in clips])
        valid = np.stack([c[1] for c in clips])
        write_atomic(cache, x=x, valid=valid)
    labels = np.array([index.class_names.index(e.label) for e in entries], dtype=np.int64)
    return ClipSet(x, valid, labels, tuple(e.name for e in entries))


def read_video_index(config: DataConfig, *, min_videos: int = len(SPLITS)) -> VideoIndex:
    """Read and check the CSV index (and the optional crop file): the rows to use, the class
    names and the notes on rows left out.

    Every problem of one kind is reported at once, in one line: all rows with an unknown label
    (unless ``data.drop_unknown``), all rows naming missing files (the count, the first few and
    the folder they were looked for in). ``min_videos``: the fewest videos a class may have (3,
    one per split; 1 for data that is only scored)."""
    index = require_file(config, "video index")
    root = config.video_root
    crops = _read_crop_file(config.resolve(config.crop_file) if config.crop_file else None)
    try:
        with index.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"video index {index} is not a readable CSV ({exc}); save it as UTF-8 CSV") from None
    for col in (config.path_column, config.label_column):
        if col not in columns:
            raise DataError(
                f"video index {index} has no column {col!r} (columns: {', '.join(columns) or 'none'}); "
                "set data.path_column / data.label_column"
            )
    if config.group_column and config.group_column not in columns:
        raise DataError(
            f"video index {index} has no column {config.group_column!r} (columns: {', '.join(columns)}); "
            "fix data.group_column"
        )
    wanted = config.classes
    empty = [
        line
        for line, row in enumerate(rows, start=2)
        if not _cell(row, config.path_column) or not _cell(row, config.label_column)
    ]
    if empty:
        raise DataError(
            f"video index {index}: {len(empty)} row(s) with an empty path or class (row {_list(empty, 10)}); "
            "fill them in or remove the rows"
        )
    unknown = [
        (line, _cell(row, config.label_column))
        for line, row in enumerate(rows, start=2)
        if wanted is not None and _cell(row, config.label_column) not in wanted
    ]
    if unknown and not config.drop_unknown:
        raise unknown_labels_error(index, unknown, wanted or ())
    entries, missing = [], []
    for line, row in enumerate(rows, start=2):
        name, label = _cell(row, config.path_column), _cell(row, config.label_column)
        if wanted is not None and label not in wanted:
            continue
        path = root / name
        if not path.is_file():
            missing.append(f"row {line} {name}")
            continue
        box, trim = crops.get(name, (None, None))
        group = (_cell(row, config.group_column) or f"<{name}>") if config.group_column else None
        entries.append(VideoEntry(row=line, name=name, path=path, label=label, crop=box, trim=trim, group=group))
    if missing:
        base = "data.root" if config.root else "the CSV's folder; data.root is unset"
        raise DataError(
            f"video index {index}: {len(missing)} of {len(rows) - len(unknown)} rows name video files that do not "
            f"exist, looked for under {root.absolute()} ({base}): {_list(missing, 5)}; "
            "fix data.root or the paths, or remove the rows"
        )
    if config.group_regex:
        regex_groups = groups_from_regex([e.name for e in entries], config.group_regex)
        entries = [dataclasses.replace(e, group=str(g)) for e, g in zip(entries, regex_groups)]
    found = sorted({e.label for e in entries})
    class_names = tuple(wanted) if wanted is not None else tuple(found)
    counts = {c: sum(e.label == c for e in entries) for c in class_names}
    short = [f"{c} ({n})" for c, n in counts.items() if n < min_videos]
    if short:
        raise DataError(
            f"video index {index}: class {', '.join(short)} has fewer than {min_videos} videos, too few for a "
            "train/val/test split; add videos or leave the class out with data.classes"
            + csv_labels_hint(config, [c for c, n in counts.items() if n == 0])
        )
    notes = tuple(n for n in (left_out_note(config, unknown),) if n)
    return VideoIndex(entries, class_names, notes)


def groups_of_names(config: DataConfig, names: Sequence[str]) -> list[str | None]:
    """The group of each CSV path by the config's group setting (None without one; a path the
    CSV does not list, or the regex does not match, is a group of its own)."""
    if config.group_regex:
        return [str(g) for g in groups_from_regex(names, config.group_regex)]
    if config.group_column:
        with config.file.open(newline="") as f:
            by_name = {_cell(r, config.path_column): _cell(r, config.group_column) for r in csv.DictReader(f)}
        return [by_name.get(n) or f"<{n}>" for n in names]
    return [None] * len(names)


def _cell(row: Mapping[str, str | None], column: str) -> str:
    return (row.get(column) or "").strip()


def _list(items: Sequence[object], most: int) -> str:
    """The first ``most`` items, then ``and N more``."""
    shown = ", ".join(map(str, items[:most]))
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def _read_crop_file(path: Path | None) -> dict[str, tuple[tuple[int, int, int], tuple[int, int] | None]]:
    """Read ``{path: [[top, left, size], [start, end]]}``; ``end <= start`` means to the end."""
    if path is None:
        return {}
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"crop file {path} not found; fix data.crop_file or remove it") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"crop file {path} is not valid JSON ({exc.msg}, line {exc.lineno}); fix it") from None
    out = {}
    for key, value in raw.items() if isinstance(raw, Mapping) else ():
        try:
            (top, left, size), (start, end) = value
            box = (int(top), int(left), int(size))
            trim = (int(start), int(end)) if 0 <= start < end else None
        except (TypeError, ValueError):
            raise DataError(f"crop file {path}: entry {key!r} must be [[top, left, size], [start, end]]") from None
        out[key] = (box, trim)
    return out


def decode_frames(entry: VideoEntry, config: DataConfig, *, max_frames: int | None = None) -> np.ndarray:
    """Decode one video: crop, resample to ``config.fps``, resize, trim (every frame, or the first
    ``max_frames``)."""
    crop = None
    if entry.crop is not None:
        top, left, size = entry.crop
        crop = (left, top, size, size)
    try:
        frames, source_fps = read_video(
            entry.path,
            gray=True,
            size=config.size,
            fps=config.fps,
            crop=crop,
            max_frames=max_frames,
            upsample=config.upsample,
        )
    except SourceError as exc:
        raise DataError(f"video {entry.path} (CSV row {entry.row}) cannot be used: {exc}") from None
    if entry.trim is not None:
        # The trim range counts source frames; map it onto the resampled time line (a slower
        # video keeps its own rate unless data.upsample repeats its frames).
        scale = (config.fps if config.upsample else min(config.fps, source_fps)) / source_fps
        frames = frames[round(entry.trim[0] * scale) : round(entry.trim[1] * scale)]
    if len(frames) == 0:
        raise DataError(f"video {entry.path} (CSV row {entry.row}) has no frames; remove the row or fix its trim range")
    return frames


def decode_entry(entry: VideoEntry, config: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Decode one video: crop, trim, resample to ``config.fps``, resize, then fit to T frames."""
    # With "cut" only the first T frames are kept, so decoding can stop there.
    limit = config.num_frames if config.long_videos == "cut" and entry.trim is None else None
    return fit_length(decode_frames(entry, config, max_frames=limit), config.num_frames, policy=config.long_videos)


def fit_length(frames: np.ndarray, num_frames: int, *, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """Fit (N, H, W) frames to exactly ``num_frames``.

    Longer: ``cut`` keeps the first T frames, ``subsample`` takes T evenly spaced ones. Shorter:
    empty (zero) frames are appended and marked invalid, as the paper did.

    Returns:
        (T, H, W) uint8 frames and a (T,) bool validity mask.
    """
    n = len(frames)
    if n >= num_frames:
        index = np.arange(num_frames) if policy == "cut" else np.linspace(0, n - 1, num_frames).round().astype(int)
        return np.ascontiguousarray(frames[index]), np.ones(num_frames, dtype=bool)
    out = np.zeros((num_frames, *frames.shape[1:]), dtype=frames.dtype)
    out[:n] = frames
    valid = np.zeros(num_frames, dtype=bool)
    valid[:n] = True
    return out, valid


def _cache_path(config: DataConfig, entries: Sequence[VideoEntry]) -> Path:
    """A cache file keyed by the preprocessing settings and every video's identity."""
    files = []
    for e in entries:
        st = e.path.stat()
        files.append([str(e.path.resolve()), st.st_size, st.st_mtime_ns, e.crop, e.trim])
    key = {
        "version": CACHE_VERSION,
        "fps": config.fps,
        "upsample": config.upsample,
        "size": config.size,
        "num_frames": config.num_frames,
        "long_videos": config.long_videos,
        "files": files,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(config.cache_dir).expanduser() / f"videos-{digest}.npz"


def stratified_split(labels: np.ndarray, *, fractions: Sequence[float], seed: int) -> tuple[np.ndarray, ...]:
    """Split sample indices into train/val/test, per class, with a fixed seed.

    Every class with at least three samples gets at least one in each split. Returns three
    sorted index arrays.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n = len(members)
        n_val = max(1, round(n * fractions[1]))
        n_test = max(1, round(n * fractions[2]))
        n_train = n - n_val - n_test
        if n_train < 1:
            raise DataError(f"class {c} has only {n} samples; it needs at least 3 to appear in train, val and test")
        parts[0] += members[:n_train].tolist()
        parts[1] += members[n_train : n_train + n_val].tolist()
        parts[2] += members[n_train + n_val :].tolist()
    return tuple(np.array(sorted(p), dtype=np.int64) for p in parts)


# --- synthetic -----------------------------------------------------------------------------


def make_synthetic_dataset(config: DataConfig) -> DatasetSplits:
    """Balanced synthetic clips (``sources.synthetic``), a different seeded stream per split.

    With ``config.synthetic_video_frames`` = N > 0 every split is a stream as the ``synthetic:``
    source makes one (see :func:`synthetic_videos`), cut into runtime windows of T frames at
    stride ``window_stride`` (default T) by :func:`~training.clips.windows_of_videos`;
    a window's name is ``split/video#window``."""
    if config.synthetic_video_frames:
        stride = config.window_stride or config.num_frames
        splits = {}
        for split, (videos, labels) in zip(SPLITS, synthetic_videos(config)):
            names = [f"{split}/{j}" for j in range(len(videos))]
            splits[split] = windows_of_videos(videos, labels, names, config.num_frames, stride)[0]
        return DatasetSplits(splits["train"], splits["val"], splits["test"], class_names=tuple(SYNTHETIC_CLASSES))
    splits = {}
    for i, (split, count) in enumerate(zip(SPLITS, config.synthetic_counts)):
        rng = np.random.default_rng([config.split_seed, i])
        labels = np.arange(count, dtype=np.int64) % len(SYNTHETIC_CLASSES)
        x = np.stack([make_clip(int(c), config.num_frames, size=config.size, rng=rng) for c in labels])
        valid = np.ones(x.shape[:2], dtype=bool)
        splits[split] = ClipSet(x, valid, labels, tuple(f"{split}/{j}" for j in range(count)))
    return DatasetSplits(splits["train"], splits["val"], splits["test"], class_names=tuple(SYNTHETIC_CLASSES))


def synthetic_videos(config: DataConfig) -> list[tuple[list[np.ndarray], np.ndarray]]:
    """Per split, ``synthetic_counts`` videos of ``synthetic_video_frames`` frames and their labels.

    A split's videos are the class segments of one stream, drawn as ``SyntheticSource`` draws
    its clips: one generator (seeded ``[split_seed, split]``), ``make_clip`` per segment, the
    classes cycling a_lines, b_lines, consolidation, ..."""
    out = []
    for i, count in enumerate(config.synthetic_counts):
        rng = np.random.default_rng([config.split_seed, i])
        labels = np.arange(count, dtype=np.int64) % len(SYNTHETIC_CLASSES)
        videos = [make_clip(int(c), config.synthetic_video_frames, size=config.size, rng=rng) for c in labels]
        out.append((videos, labels))
    return out
