"""Experiment settings: one validated, frozen object built from a YAML file plus overrides.

A config file has four sections (all optional except ``data``) and a ``name``::

    name: adrenalmnist3d
    data:  {kind: medmnist3d, root: "${DAS_STREAM_DATA:-../shared/data}/medmnist3d", path: adrenalmnist3d.npz}
    model: {method: das, keep: 0.5, feature_size: 28, input_size: 64}
    train: {epochs: 60, patience: 10, batch_size: 16, lr: 1.0e-4, seed: 0}
    grid:  {methods: [full, random, uniform, dps, adps, das], seeds: [0, 1, 2], keeps: [0.5]}

Overrides are dotted keys, ``train.lr=3e-4``; values are read as YAML (``grid.keeps=[0.25,0.5]``).
Relative data paths are relative to ``data.root`` when it is set, else to the working directory
(never to the YAML file's folder); ``${VAR}`` / ``${VAR:-default}`` in the data paths read the
environment. Unknown keys and bad values raise :class:`~core.errors.ConfigError` naming the key
and the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.settings import DEVICE_FORMS, coerce, is_device_name, parse_scalar, read_yaml
from sampler.model import METHODS, ModelConfig, ModelSpec

DATA_KINDS = ("medmnist3d", "videos", "synthetic")


K_SCHEDULES = ("fixed", "random")


@dataclass(frozen=True)
class DataConfig:
    """Where the samples come from and how they are shaped.

    Args:
        kind: ``medmnist3d`` (official npz, T = depth), ``videos`` (CSV index + folder) or
            ``synthetic`` (clips from ``sources.synthetic``).
        origin: where the data comes from and how to get it (free text, shown when the data
            is missing).
        path: the npz file (medmnist3d) or the CSV index (videos); relative to ``root`` when
            that is set, else to the working directory.
        root: the dataset's folder: relative ``path`` and ``crop_file`` are taken from it, and
            so are the CSV's video paths; default: ``path`` from the working directory and the
            CSV's paths from the CSV's own folder. ``${VAR}`` and ``${VAR:-default}`` in
            ``root``, ``path``, ``crop_file`` and ``cache_dir`` are environment variables (the
            bundled configs use ``${DAS_STREAM_DATA:-../shared/data}``).
        path_column, label_column: CSV columns holding the video path and its class.
        classes: videos: the classes to keep, in label order (default: all, sorted).
        drop_unknown: videos: rows whose label is not in ``classes`` are an error listing
            them (false, the default) or are left out with a ``warning:`` line (true).
        crop_file: videos: optional JSON ``{path: [[top, left, size], [start, end]]}`` (the
            upstream POCUS ``crop.json`` layout); videos without an entry are used whole.
        fps: videos: every video is resampled to this frame rate (:mod:`core.resample`, the
            rule ``das-stream run`` applies): the frames nearest to the times j / fps.
        upsample: videos slower than ``fps``: repeat frames to fill the rate (false, the
            default, keeps each frame once, as ``das-stream run`` shows a slow stream).
        size: videos/synthetic: frames are resized to size x size.
        num_frames: videos/synthetic: T. Shorter videos are padded with empty frames.
        long_videos: videos longer than T: ``cut`` keeps the first T frames (the time scale
            stays the same for every video), ``subsample`` spreads T frames over the video.
        split: videos/synthetic: train/val/test fractions (stratified; by video, or by group
            when ``group_column`` or ``group_regex`` is set).
        split_seed: the seed of that split, fixed across training seeds.
        cache_dir: decoded videos are cached here (outside the repo), keyed by the settings.
        synthetic_counts: clips per split for ``synthetic`` (videos per split when
            ``synthetic_video_frames`` is set).
        synthetic_video_frames: synthetic: 0 makes every sample its own clip of T frames. N > 0
            generates each split as the ``synthetic:`` source of ``das-stream run`` generates a
            stream (one seeded generator, class segments of N frames cycling through the
            classes; 64 is the source's ``clip_frames``) and cuts every segment into the windows
            the runtime cuts (T, stride ``window_stride``; the last one padded and masked when
            N is not a multiple of the stride), so training sees what ``run`` sees, including
            windows where the class pattern never shows.
        folds: K > 1 makes ``compare`` run stratified K-fold cross-validation (0: the fixed split).
        fold_test: medmnist3d folds: ``merge`` (pool the official splits) or ``official`` (keep
            the official test split; folds over train + val).
        group_column, group_regex: videos: keep each group (patient) in one split (``train``,
            ``evaluate`` and ``compare``, with or without folds), by a CSV column or a regex
            over the path (first capture group).
        window_stride: videos, folds, synthetic video windows: stride S of the runtime windows
            (0: T, no overlap, the runtime's default).
        train_windows: videos, folds: ``first`` window, a ``random`` window per visit, or ``all``.
        max_frames: videos, folds: decode at most this many frames per video (0: whole video).
        corruption: ``none``, ``test`` (also score on corrupted test data) or ``both`` (train
            and validate on corrupted data too); see sampler/training/corruptions.py.
        corruption_options: ``rate``, ``min_run``, ``max_run``, ``kinds``.
        corruption_seed: seed of the corruptions (the same for every method).
    """

    kind: str = "medmnist3d"
    origin: str = ""
    path: str = ""
    root: str | None = None
    path_column: str = "path"
    label_column: str = "class_from_prefix"
    classes: tuple[str, ...] | None = None
    drop_unknown: bool = False
    crop_file: str | None = None
    fps: float = 10.0
    upsample: bool = False
    size: int = 64
    num_frames: int = 16
    long_videos: str = "cut"
    split: tuple[float, ...] = (0.6, 0.2, 0.2)
    split_seed: int = 0
    cache_dir: str = "~/.cache/das-stream"
    synthetic_counts: tuple[int, ...] = (512, 128, 128)
    synthetic_video_frames: int = 0
    # cross-validation (``compare --folds K``, see sampler/training/crossval.py)
    folds: int = 0
    fold_test: str = "merge"
    group_column: str | None = None
    group_regex: str | None = None
    window_stride: int = 0
    train_windows: str = "first"
    max_frames: int = 0
    corruption: str = "none"
    corruption_options: Mapping[str, Any] = field(default_factory=dict)
    corruption_seed: int = 0

    def resolve(self, value: str) -> Path:
        """A data file setting (``path``, ``crop_file``) as a path: ``~`` expanded, relative to
        ``root`` when that is set, else to the working directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() or not self.root else Path(self.root).expanduser() / p

    @property
    def file(self) -> Path:
        """``data.path`` resolved (the CSV index or the npz)."""
        return self.resolve(self.path)

    @property
    def video_root(self) -> Path:
        """The folder the CSV's video paths are relative to."""
        return Path(self.root).expanduser() if self.root else self.file.parent

    @property
    def groups(self) -> str | None:
        """How the split keeps patients apart, in words (None: by video)."""
        if self.group_column:
            return f"group_column '{self.group_column}'"
        if self.group_regex:
            return f"group_regex '{self.group_regex}'"
        return None


@dataclass(frozen=True, kw_only=True)
class ModelSettings(ModelSpec):
    """The model to train: a :class:`sampler.model.ModelSpec` (method, feature_size,
    input_size, backbone, backbone_weights, sampler, classifier; its defaults and its checks)
    plus the keep ratio.

    Args:
        keep: keep ratio k/T; ignored by a sampler that keeps every frame (``full``).
    """

    keep: float = 0.5

    def model_config(self, num_frames: int, class_names: tuple[str, ...], name: str) -> ModelConfig:
        """The model sized to the data: T frames and these classes."""
        return ModelConfig.for_data(self, num_frames=num_frames, keep=self.keep, class_names=class_names, name=name)


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation and bookkeeping.

    Args:
        epochs: maximum epochs.
        patience: stop after this many epochs without a lower validation loss.
        batch_size: training batch size (the paper: 16).
        lr: Adam learning rate (the paper: 1e-4).
        seed: seeds python, numpy, torch and the data order.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threads: torch CPU threads; 0 (the default): half the usable cores, at least 1
            (:func:`auto_threads`; 1 on a 2-core machine, where 2 threads under load made an
            epoch 15-30x slower, docs/data.md).
        class_weights: ``balanced`` weighs the loss by inverse class frequency, ``none`` does not.
        bn_stats: how BatchNorm running statistics (used in eval mode) are kept. ``epoch``:
            reset at the start of every epoch and averaged over that epoch's batches. ``ema``:
            an exponential moving average with ``bn_momentum``. MobileNetV3 from random init
            needs ``epoch``: its pre-norm variances are tiny (depthwise convolutions), so the
            initial running variance of 1 takes hundreds of EMA steps to wash out and eval-mode
            outputs collapse to a constant until then.
        bn_momentum: the EMA momentum for ``bn_stats: ema``; 0 keeps each layer's own (0.01 in
            MobileNetV3).
        eval_batch_size: batch size for validation and test.
        freeze_backbone: keep the backbone's (pretrained) weights fixed and embed every frame
            once; only the sampler, pooling and head learn (``compare --folds`` on videos;
            see sampler/training/frozen.py).
        init_from: a model file (``model.pt``) whose weights the run starts from instead of
            ``model.backbone_weights``: fine-tuning a trained model on new data. Its method, T,
            k, sizes, backbone, options and class names must equal this config's. Empty: none.
        explore_epochs: anneal the learned samplers' Gumbel exploration: the noise is scaled by
            ``max(0, 1 - (epoch - 1) / explore_epochs)``, full in epoch 1 and none from epoch
            ``explore_epochs + 1`` on, so training ends on the picks inference makes. 0 (the
            default): full noise in every epoch, as the paper trains.
        k_schedule: ``fixed`` (every batch picks k frames) or ``random`` (each batch draws k
            from 1..k, so one model is good at every prefix of its sampler's order: what
            best-first embedding with an early exit needs; Uniform then picks coarse to fine,
            ``nested``). Validation then scores the mean loss over k = 1, 2, 4, ..., k. Full
            keeps every frame either way.
        out: folder for run outputs.
        progress: show a progress bar per epoch (only when stderr is a terminal).
    """

    epochs: int = 60
    patience: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    class_weights: str = "balanced"
    bn_stats: str = "epoch"
    bn_momentum: float = 0.1
    eval_batch_size: int = 64
    freeze_backbone: bool = False
    init_from: str = ""
    explore_epochs: int = 0
    k_schedule: str = "fixed"
    out: str = "runs"
    progress: bool = True


@dataclass(frozen=True)
class GridSettings:
    """The grid ``compare`` runs: every method x seed x keep ratio (``full`` once per seed)."""

    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    keeps: tuple[float, ...] = (0.5,)


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one experiment needs; ``source`` names the file it came from (for messages)."""

    name: str
    data: DataConfig
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    grid: GridSettings = field(default_factory=GridSettings)
    source: str = "<defaults>"

    def to_dict(self) -> dict[str, Any]:
        """A YAML-safe dict that :func:`config_from_dict` reads back (``source`` left out)."""
        d = _plain(dataclasses.asdict(self))
        d.pop("source")
        return d

    def replace(self, **sections: Any) -> ExperimentConfig:
        """A copy with whole sections or single section fields replaced, e.g.
        ``cfg.replace(model={"method": "das"}, train={"seed": 1})``."""
        changes = {}
        for name, value in sections.items():
            current = getattr(self, name)
            changes[name] = dataclasses.replace(current, **value) if isinstance(value, Mapping) else value
        return dataclasses.replace(self, **changes)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelSettings,
    "train": TrainSettings,
    "grid": GridSettings,
}


def load_config(path: str | Path, *, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment file and apply ``section.key=value`` overrides.

    Raises:
        ConfigError: missing/unparsable file, unknown key or bad value (naming the key and file).
    """
    return config_from_dict(read_yaml(path), source=str(path), overrides=overrides)


def config_from_dict(
    raw: Mapping[str, Any], *, source: str = "<dict>", overrides: Sequence[str] = ()
) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from nested mappings plus overrides."""
    tree: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    overridden = set()
    for item in overrides:
        key, value = _parse_override(item)
        overridden.add(key)
        section, _, name = key.partition(".")
        if not name:
            if section != "name":
                raise ConfigError(
                    f"override {item!r}: use section.key=value (sections: {', '.join(SECTIONS)}) or name=..."
                )
            tree["name"] = value
            continue
        if section not in SECTIONS:
            raise ConfigError(f"override {item!r}: unknown section {section!r}; use one of {', '.join(SECTIONS)}")
        tree.setdefault(section, {})
        if not isinstance(tree[section], dict):
            raise ConfigError(f"section {section!r} in {source} must be a mapping")
        tree[section][name] = value
    unknown = set(tree) - set(SECTIONS) - {"name"}
    if unknown:
        raise ConfigError(
            f"unknown key {sorted(unknown)[0]!r} in {source}; top-level keys are name, {', '.join(SECTIONS)}"
        )
    if "data" not in tree:
        raise ConfigError(f"config {source} has no 'data' section; add data: {{kind: ..., path: ...}}")
    where = _Origin(source=source, overridden=frozenset(overridden))
    if isinstance(tree.get("data"), dict):
        for key in EXPANDED_KEYS:
            if isinstance(tree["data"].get(key), str):
                tree["data"][key] = expand_vars(tree["data"][key], where(f"data.{key}"), f"data.{key}")
    sections = {name: _build_section(name, cls, tree.get(name, {}), where) for name, cls in SECTIONS.items()}
    name = tree.get("name") or Path(sections["data"].path).stem or sections["data"].kind
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"name {name!r} in {source} must be letters, digits, '-' or '_' (it names output files)")
    config = ExperimentConfig(name=name, source=source, **sections)
    _validate(config, where)
    return config


@dataclass(frozen=True)
class _Origin:
    """Says where a key's value came from, for error messages."""

    source: str
    overridden: frozenset[str]

    def __call__(self, key: str) -> str:
        return f"{key} (set on the command line)" if key in self.overridden else f"{key} in {self.source}"


EXPANDED_KEYS = ("root", "path", "crop_file", "cache_dir")
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_vars(text: str, where: str, key: str) -> str:
    """``${VAR}`` and ``${VAR:-default}`` replaced by the environment (an empty variable counts
    as unset); an unset ``${VAR}`` without a default is a ConfigError saying how to set it."""

    def value(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if os.environ.get(name):
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{where} uses ${{{name}}}, which is not set; export {name}=FOLDER or pass --set {key}=FOLDER", key=key
        )

    return _VAR.sub(value, text)


def auto_threads() -> int:
    """``train.threads: 0``: half the cores this process may use, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=3e-4")
    return key.strip(), parse_scalar(text)


def _build_section(name: str, cls: type, values: Any, where: _Origin) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"section {name!r} in {where.source} must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key {where(f'{name}.{key}')}; known keys in {name}: {', '.join(sorted(known))}")
        kwargs[key] = coerce(value, hints[key], where(f"{name}.{key}"))
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a section that validates itself (model: ModelSpec's checks)
        if exc.key is None:
            raise
        key = f"{name}.{exc.key}"
        raise ConfigError(f"{where(key)} {exc.problem}", key=key, problem=exc.problem) from None


def _validate(c: ExperimentConfig, where: _Origin) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{where(key)} {what}")

    d, m, t, g = c.data, c.model, c.train, c.grid
    need(d.kind in DATA_KINDS, "data.kind", f"must be one of {', '.join(DATA_KINDS)}, got {d.kind!r}")
    need(d.kind == "synthetic" or bool(d.path), "data.path", "is required for kind " + d.kind)
    need(d.long_videos in ("cut", "subsample"), "data.long_videos", f"must be cut or subsample, got {d.long_videos!r}")
    need(d.fps > 0, "data.fps", f"must be > 0, got {d.fps}")
    need(d.size >= 8, "data.size", f"must be >= 8 pixels, got {d.size}")
    need(d.num_frames >= 2, "data.num_frames", f"must be >= 2, got {d.num_frames}")
    need(
        len(d.split) == 3 and all(0 < f < 1 for f in d.split) and abs(sum(d.split) - 1) < 1e-6,
        "data.split",
        f"must be three fractions in (0, 1) summing to 1 (train, val, test), got {list(d.split)}",
    )
    need(d.folds == 0 or d.folds >= 2, "data.folds", f"must be 0 (fixed split) or >= 2, got {d.folds}")
    need(d.fold_test in ("merge", "official"), "data.fold_test", f"must be merge or official, got {d.fold_test!r}")
    need(
        d.train_windows in ("first", "random", "all"),
        "data.train_windows",
        f"must be first, random or all, got {d.train_windows!r}",
    )
    need(d.window_stride >= 0 and d.max_frames >= 0, "data.window_stride", "and data.max_frames must be >= 0")
    need(
        d.corruption in ("none", "test", "both"), "data.corruption", f"must be none, test or both, got {d.corruption!r}"
    )
    need(
        d.corruption != "both" or d.kind == "videos",
        "data.corruption",
        "both (corrupted training) needs data.kind videos; use test",
    )
    need(
        not (d.group_column and d.group_regex), "data.group_regex", "and data.group_column exclude each other; set one"
    )
    need(
        d.kind == "videos" or not (d.group_column or d.group_regex),
        "data.group_regex" if d.group_regex else "data.group_column",
        f"groups videos by patient and needs data.kind videos (got {d.kind}); remove it",
    )
    need(
        len(d.synthetic_counts) == 3 and min(d.synthetic_counts) >= 2,
        "data.synthetic_counts",
        "must be three counts >= 2",
    )
    need(
        d.synthetic_video_frames >= 0,
        "data.synthetic_video_frames",
        f"must be 0 (one clip per sample) or the frames per synthetic video, e.g. 64; got {d.synthetic_video_frames}",
    )
    need(
        d.classes is None or len(set(d.classes)) == len(d.classes) >= 2,
        "data.classes",
        "must list at least two distinct classes",
    )
    for key, keep in [("model.keep", m.keep), *(("grid.keeps", x) for x in g.keeps)]:
        need(0 < keep <= 1, key, f"must be a keep ratio in (0, 1], got {keep}")
    need(
        len(g.methods) > 0 and len(g.seeds) > 0 and len(g.keeps) > 0, "grid", "needs at least one method, seed and keep"
    )
    for method in g.methods:  # the model section checked itself (ModelSpec) when it was built
        need(method in METHODS, "grid.methods", f"must be one of {', '.join(METHODS)}, got {method!r}")
    need(
        not t.freeze_backbone or (d.kind == "videos" and d.folds >= 2),
        "train.freeze_backbone",
        "works with compare --folds on videos only (data.kind videos, data.folds >= 2); set it to false",
    )
    need(
        not (t.init_from and t.freeze_backbone),
        "train.init_from",
        "cannot be combined with train.freeze_backbone (the frozen path embeds with model.backbone_weights); drop one",
    )
    need(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}")
    need(
        t.explore_epochs >= 0,
        "train.explore_epochs",
        f"must be >= 0 (0: no annealing; N: no exploration noise after epoch N), got {t.explore_epochs}",
    )
    need(t.patience >= 1, "train.patience", f"must be >= 1, got {t.patience}")
    need(t.batch_size >= 1 and t.eval_batch_size >= 1, "train.batch_size", "must be >= 1")
    need(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
    need(is_device_name(t.device), "train.device", f"must be one of {DEVICE_FORMS}, got {t.device!r}")
    need(t.threads >= 0, "train.threads", f"must be >= 0, got {t.threads}")
    need(t.bn_stats in ("epoch", "ema"), "train.bn_stats", f"must be epoch or ema, got {t.bn_stats!r}")
    need(
        t.k_schedule in K_SCHEDULES,
        "train.k_schedule",
        f"must be one of {', '.join(K_SCHEDULES)}, got {t.k_schedule!r}",
    )
    need(0 <= t.bn_momentum <= 1, "train.bn_momentum", f"must be in [0, 1], got {t.bn_momentum}")
    need(
        t.class_weights in ("balanced", "none"),
        "train.class_weights",
        f"must be balanced or none, got {t.class_weights!r}",
    )


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
