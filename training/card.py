"""What a trained model file says about itself: preprocessing, training data, metrics (``das-stream info``).

``train`` stores :func:`training_meta` in the model file (``SampledClassifier.meta``); ``run``
applies its ``preprocessing`` and ``info`` prints :func:`model_card`. Also the one-line notes
``train`` logs about the data (padded clips, see :func:`padding_notes`) and :func:`duration`.
"""

from __future__ import annotations

import datetime
import hashlib
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.exit import ExitRule
from sampler.model import SampledClassifier

from .clips import SPLITS, DatasetSplits
from .config import ExperimentConfig
from .datasets import clip_record


def duration(seconds: float) -> str:
    """``12.3 s`` under a minute, ``4.2 min`` under an hour, else ``1.5 h``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def preprocessing(config: ExperimentConfig, data: DatasetSplits) -> dict[str, Any]:
    """What every clip went through before the model saw it (``run`` repeats it on a stream)."""
    d = config.data
    return {
        "kind": d.kind,
        # Only videos have a time axis at a known rate; volumes (slices) and synthetic clips do not.
        "fps": float(d.fps) if d.kind == "videos" else None,
        "size": int(data.train.x.shape[-1]),
        "gray": True,
        "crop": (f"per-video boxes from {Path(d.crop_file).name}" if d.crop_file else None),
        "num_frames": int(data.num_frames),
        "long_videos": d.long_videos if d.kind == "videos" else None,
    }


def data_fingerprint(data: DatasetSplits) -> str:
    """sha256 (first 16 hex digits) of every clip's frames, mask, label and the class names."""
    h = hashlib.sha256(repr(tuple(data.class_names)).encode())
    for split in SPLITS:
        clips = data.split(split)
        for arr in (clips.x, clips.valid, clips.labels):
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def clip_counts(data: DatasetSplits) -> dict[str, dict[str, int]]:
    """{split: {class: clips}}."""
    return {s: {c: int((data.split(s).labels == i).sum()) for i, c in enumerate(data.class_names)} for s in SPLITS}


def padded_counts(data: DatasetSplits) -> dict[str, dict[str, int]]:
    """{class: {"padded": clips shorter than T, "clips": clips}} over all splits."""
    valid = np.concatenate([data.split(s).valid for s in SPLITS])
    labels = np.concatenate([data.split(s).labels for s in SPLITS])
    padded = ~np.all(valid, axis=1)
    return {
        c: {"padded": int(padded[labels == i].sum()), "clips": int((labels == i).sum())}
        for i, c in enumerate(data.class_names)
    }


def padding_notes(data: DatasetSplits) -> list[str]:
    """One line on padded clips per class (none when no clip is padded) and a warning when T
    exceeds most clips' length."""
    valid = np.concatenate([data.split(s).valid for s in SPLITS])
    lengths = valid.sum(axis=1)
    t = data.num_frames
    padded = lengths < t
    if not padded.any():
        return []
    per_class = ", ".join(f"{c} {v['padded']}/{v['clips']}" for c, v in padded_counts(data).items())
    notes = [
        f"padding: {int(padded.sum())} of {len(lengths)} clips are shorter than T={t} frames and padded with empty "
        f"frames ({per_class}); the shortest has {int(lengths.min())} real frames of {t}"
    ]
    if padded.sum() * 2 > len(lengths):
        notes.append(
            f"warning: T={t} exceeds the length of most clips ({int(padded.sum())} of {len(lengths)}, median "
            f"{int(np.median(lengths))} real frames); lower data.num_frames or data.fps, or expect picks on padding"
        )
    return notes


def versions() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {"das_stream": version("das-stream"), "torch": str(torch.__version__), "python": platform.python_version()}


def training_meta(
    config: ExperimentConfig, data: DatasetSplits, model: SampledClassifier, *, requested_weights: str
) -> dict[str, Any]:
    """The ``meta`` dict ``train`` stores in the model file (plain values only)."""
    return {
        "preprocessing": preprocessing(config, data),
        "training": {
            "experiment": config.name,
            "data_kind": config.data.kind,
            "data_path": config.data.path or None,
            "data_fingerprint": data_fingerprint(data),
            "clips": clip_counts(data),
            "padded": padded_counts(data),
            "seed": config.train.seed,
            "k_schedule": config.train.k_schedule,
            "backbone_weights_requested": requested_weights,
            "backbone_weights_used": model.classifier.weights_source,
        },
        "split": data.split_record or clip_record(data),
        "versions": versions(),
        "created": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
    }


def split_summary(record: dict[str, Any]) -> str:
    """``train 7 videos (3 groups), val 2 (1), test 3 (1)``: a recorded split in one line."""
    parts = []
    for split in SPLITS:
        samples = record.get(split) or []
        groups = {g for *_, g in samples if g is not None}
        parts.append(f"{split} {len(samples)}" + (f" ({len(groups)} groups)" if groups else ""))
    return ", ".join(parts)


def model_card(path: str | Path) -> str:
    """``das-stream info``: a readable summary of a model file (older files show what they hold)."""
    model = SampledClassifier.load(path)
    c, meta = model.config, model.meta
    pre, tr = meta.get("preprocessing") or {}, meta.get("training") or {}
    params = sum(p.numel() for p in model.parameters())
    lines = [
        f"model: {path} ({c.name})",
        f"method: {c.method}, keeps k={c.k} of T={c.num_frames} frames",
        f"classes: {', '.join(c.class_names)}",
        f"sizes: sampler features {c.feature_size} px, backbone input {c.input_size} px; {params:,} parameters",
        f"backbone: {c.backbone}, initial weights used: "
        + (
            tr.get("backbone_weights_used")
            or f"{c.backbone_weights} (requested; this file does not record what was used)"
        )
        + (
            f" (requested {tr['backbone_weights_requested']})"
            if tr.get("backbone_weights_requested") not in (None, tr.get("backbone_weights_used"))
            else ""
        ),
    ]
    if pre:
        fps = (
            f"{pre['fps']:g} fps"
            if pre.get("fps")
            else "no frame rate (volumes or synthetic clips; run keeps every frame)"
        )
        lines.append(
            f"preprocessing: {pre.get('kind')}, {fps}, {pre.get('size')} px, gray, crop {pre.get('crop') or 'none'}, "
            f"longer videos: {pre.get('long_videos') or 'n/a'}"
        )
    else:
        lines.append(
            "preprocessing: not recorded (a model file from before das-stream stored it); run keeps every frame"
        )
    if tr:
        lines.append(
            f"training data: {tr.get('data_kind')} {tr.get('data_path') or ''} fingerprint {tr.get('data_fingerprint')}".replace(
                "  ", " "
            )
        )
        for split, counts in (tr.get("clips") or {}).items():
            lines.append(
                f"  {split}: {sum(counts.values())} clips ({', '.join(f'{k} {v}' for k, v in counts.items())})"
            )
        padded = tr.get("padded") or {}
        if any(v.get("padded") for v in padded.values()):
            lines.append("  padded clips: " + ", ".join(f"{k} {v['padded']}/{v['clips']}" for k, v in padded.items()))
        lines.append(f"  seed {tr.get('seed')}")
    lines.append(f"best-first order: {model.sampler.order_rule}; k_max {c.k}")
    lines.append(f"early exit: {ExitRule.from_dict(meta.get('exit')).describe()}")
    split = meta.get("split")
    if split:
        by = (
            "by video"
            if split.get("by") == "video"
            else "by sample"
            if split.get("by") == "sample"
            else f"by {split['by']}"
        )
        lines.append(
            f"split ({by}; `evaluate` scores the recorded test split): {split_summary(split)}"
            + (f", paths relative to {split['root']}" if split.get("root") else "")
        )
    else:
        lines.append("split: not recorded (a model file from before das-stream stored it)")
    metrics = meta.get("metrics") or {}
    if metrics:
        parts = [
            f"{k} {v:.1f}%" if k.endswith("_acc") else f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in metrics.items()
        ]
        lines.append("metrics: " + ", ".join(parts))
    if meta.get("versions"):
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    if meta.get("created"):
        lines.append(f"created: {meta['created']}")
    return "\n".join(lines) + "\n"
