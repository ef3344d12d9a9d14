"""Helpers for the streamer tests: small real model files and real video files."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import torch

from sampler.model import ModelConfig, build_model
from sinks.messages import Stats
from sources.synthetic import CLASSES, encode_video, make_clip


def make_model_file(
    path: Path,
    *,
    method: str = "das",
    num_frames: int = 8,
    k: int = 4,
    input_size: int = 32,
    feature_size: int = 16,
    seed: int = 0,
) -> Path:
    """Save an untrained (random-init) model: enough to exercise the runtime end to end."""
    torch.manual_seed(seed)
    k = num_frames if method == "full" else k
    cfg = ModelConfig(
        method=method,
        num_frames=num_frames,
        k=k,
        class_names=CLASSES,
        feature_size=feature_size,
        input_size=input_size,
        backbone_weights="none",
        name=path.stem,
    )
    model = build_model(cfg)
    calibrate_batchnorm(model, input_size)
    model.save(path)
    return path


def accounted(s) -> bool:
    """Every frame of a finished stream is accounted for: forwarded, skipped or dropped."""
    return s.frames_pending == 0 and s.frames_in == s.frames_forwarded + s.frames_skipped + s.frames_dropped


def stats(stream: str, **fields) -> Stats:
    """A stats message of ``stream`` whose counters add up (``fields`` replace any of them)."""
    base = dict(
        stream=stream,
        frames_in=100,
        frames_forwarded=40,
        frames_skipped=30,
        frames_dropped=5,
        frames_resampled_out=20,
        frames_pending=5,
        bad_messages=2,
        windows=6,
        fps_in=30.0,
        latency_ms={},
        compute_saved=0.5,
    )
    return Stats(**{**base, **fields})


def calibrate_batchnorm(model, input_size: int) -> None:
    """Give a random-init backbone batch-norm statistics of real-looking frames.

    Untrained, its running statistics are the identity and the activations vanish through the
    layers (embeddings ~1e-8), so every frame would give the same prediction and a test that
    compares predictions could not fail.
    """
    rng = np.random.default_rng(0)
    frames = np.concatenate(
        [make_clip(c, 8, size=input_size, rng=rng, empty_run_prob=0.0) for c in range(len(CLASSES))]
    )
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the calibration batch
    model.classifier.train()
    with torch.no_grad():
        model.classifier.embed(torch.from_numpy(frames)[:, None])
    model.classifier.eval()
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum


def write_video(path: Path, *, frames: int, fps: int = 30, size: int = 64, seed: int = 0) -> Path:
    """Encode synthetic ultrasound-like frames to an H.264 (mp4) file with PyAV."""
    rng = np.random.default_rng(seed)
    clip = np.concatenate(
        [make_clip(i % len(CLASSES), 16, size=size, rng=rng, empty_run_prob=0.0) for i in range(-(-frames // 16))]
    )[:frames]
    return encode_video(path, clip, fps=fps)


class ListSink:
    """A sink that keeps what it is given (and, with ``hold``, waits for it before each prediction:
    a stalled sink)."""

    def __init__(self, hold: asyncio.Event | None = None):
        self.predictions, self.stats, self.hold = [], [], hold
        self.received: list[float] = []  # wall time each prediction reached the sink

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return None

    async def publish_prediction(self, p):
        if self.hold is not None:
            await self.hold.wait()
        self.received.append(time.time())
        self.predictions.append(p)

    async def publish_stats(self, s):
        self.stats.append(s)
