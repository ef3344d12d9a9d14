"""What the bench feeds the engines: its models, frames, windows, a video file and a replayed
live stream. Public: the scripts in benchmarks/ build on them too."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from sampler.package import PackageModel
from sampler.package_file import is_package
from sources.base import SourceCounts
from sources.frame import Frame
from sources.synthetic import CLASSES, encode_video, make_clip

from ..window import Window, Windower


def bench_models(
    model: str | None = None,
    *,
    num_frames: int = 32,
    input_size: int = 224,
    feature_size: int = 56,
    device: str = "auto",
) -> dict[str, Any]:
    """The DAS model(s) and their full-sequence twin, keyed "das@0.5", "full", ...

    Args:
        model: a model package (no torch needed; its full twin is the same graphs embedding every
            frame, :meth:`PackageModel.full_twin`) or a model file: that model and a full-sequence
            twin of the same T and input size. None: untrained torch DAS models at k/T = 0.25,
            0.5 and 0.75 (timing does not depend on weights) of ``num_frames`` frames at
            ``input_size`` px.
        num_frames, input_size, feature_size: the untrained models' T, frame side and sampler
            feature resolution.
        device: where a package runs (torch models are placed by the engine).
    """
    if model and is_package(model):
        package = PackageModel(model, device=device)
        return {f"{package.method}@{package.k / package.num_frames:g}": package, "full": package.full_twin()}
    import torch  # the torch models: torch only when they are asked for

    from sampler.model import SAMPLERS, ModelConfig, SampledClassifier, build_model

    if model:
        das = SampledClassifier.load(model)
        base = das.config
        models = {f"{base.method}@{base.k / base.num_frames:g}": das}
    else:
        base = ModelConfig(
            method="das",
            num_frames=num_frames,
            k=num_frames // 2,
            class_names=CLASSES,
            input_size=input_size,
            feature_size=feature_size,
            backbone_weights="none",
            name="bench",
        )
        models = {}
        for keep in (0.25, 0.5, 0.75):
            torch.manual_seed(0)
            models[f"das@{keep:g}"] = build_model(
                replace(base, k=SAMPLERS["das"].frames_to_keep(base.num_frames, keep))
            )
    torch.manual_seed(0)
    models["full"] = build_model(replace(base, method="full", k=base.num_frames, sampler={}))
    return models


def headline(models: dict[str, Any]) -> str:
    """The DAS variant the headline ratios use: k/T = 0.5 when there is one."""
    das = [k for k in models if k != "full"]
    return "das@0.5" if "das@0.5" in das else das[0]


class FrameMaker:
    """Fresh frames (new sequence numbers, so nothing is cached) of ultrasound-like content."""

    def __init__(self, size: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        clip = np.concatenate([make_clip(c, 32, size=size, rng=rng) for c in range(len(CLASSES))])
        self.images = list(clip)
        self.seq = 0

    def frames(self, n: int, stream: str = "bench") -> list[Frame]:
        out = [
            Frame(stream, self.seq + i, time.time(), self.images[(self.seq + i) % len(self.images)]) for i in range(n)
        ]
        self.seq += n
        return out


def windows_of(frames: list[Frame], num_frames: int, stride: int) -> list[Window]:
    """The windows the runtime cuts from ``frames`` (T = ``num_frames``, ``stride``), the last one
    flushed."""
    w = Windower(stream=frames[0].stream, num_frames=num_frames, stride=stride)
    out = [x for f in frames if (x := w.push(f)) is not None]
    if (last := w.flush()) is not None:
        out.append(last)
    return out


def make_video(path: Path, *, frames: int, fps: int = 30, width: int = 640, height: int = 480) -> Path:
    """A synthetic ultrasound-like H.264 clip at a typical probe resolution."""
    rng = np.random.default_rng(1)

    def images() -> Iterator[np.ndarray]:
        made = 0
        while True:
            for image in make_clip(made // 32 % len(CLASSES), 32, size=height, rng=rng):
                if made == frames:
                    return
                canvas = np.zeros((height, width), np.uint8)
                x0 = (width - height) // 2
                canvas[:, x0 : x0 + height] = image
                yield canvas
                made += 1

    return encode_video(path, images(), fps=fps, options={"preset": "veryfast"})


class ReplaySource:
    """A live stream of frames rendered before the run, released at ``fps`` from ``start`` on.

    Like a probe, it does not wait for a slow reader: a frame whose slot has passed before the
    pipeline asked for it is lost and counted (``overflow``, which the pipeline reports as dropped).
    """

    def __init__(self, name: str, images: list[np.ndarray], *, fps: float, start: float) -> None:
        self.name, self.images, self.fps, self.start = name, images, fps, start
        self.counters = {"overflow": 0}
        self._seq = 0

    async def __aenter__(self) -> ReplaySource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __aiter__(self) -> ReplaySource:
        return self

    def counts(self) -> SourceCounts:
        return SourceCounts(overflow=self.counters["overflow"])

    async def __anext__(self) -> Frame:
        due = self.start + self._seq / self.fps
        now = time.monotonic()
        if now < due:
            await asyncio.sleep(due - now)
        elif (late := int((now - due) * self.fps)) > 0:
            self.counters["overflow"] += late
            self._seq += late
        seq = self._seq
        self._seq += 1
        return Frame(self.name, seq, time.time(), self.images[seq % len(self.images)])
