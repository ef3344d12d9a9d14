"""Training with a frozen, pretrained backbone (``train.freeze_backbone: true``).

With the backbone's weights fixed (e.g. EfficientNet-Lite0's ImageNet weights), a frame's
embedding does not change during training, so every frame of every video is embedded **once**
(and cached under ``data.cache_dir``); training and evaluation then run the sampler on small
copies of the frames and take the picked frames' embeddings from the table
(:meth:`~sampler.model.SampledClassifier.forward_embedded`). Only the sampler, the projection,
the attention pooling and the head learn. On two CPU cores that turns a run from tens of minutes
into seconds, which is what makes a grid over folds, seeds, keeps and methods affordable.

The table is written in chunks of :data:`CHUNK` frames while it is computed (a folder
``emb-<key>.partial/`` next to the finished ``emb-<key>.npz``), with a progress line at most every
half minute; an interrupted embedding continues from its last chunk.

The saved model is an ordinary model file (the backbone holds the pretrained weights it was
embedded with), so ``das-stream run`` and ``evaluate`` use it unchanged, embedding the picks
as they arrive. The picked embeddings equal what the model computes from the pixels when the
frames are given at the sizes the table was built from (``tests/sampler/test_frozen.py``).

Corrupted variants (``data.corruption``) are embedded from the corrupted frames, with seed
``(corruption_seed, video index)`` exactly as :mod:`.crossval` corrupts test videos without a
frozen backbone. Each video has this one corrupted realisation wherever it appears: with
``both``, training and validation use it too (a fold never trains or validates on its own test
videos, so nothing leaks; embedding a second and third copy would double the embedding time).
Unlike the pixel path, training windows are therefore drawn from one corrupted realisation
rather than corrupted afresh at every draw.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sampler.classifier import FrameClassifier, frame_classifier
from sampler.model import SampledClassifier

from ..card import duration
from ..clips import Clips, DatasetSplits, cut_windows, windows_of_videos
from ..config import ExperimentConfig
from ..corruptions import StreamCorruption, corrupt_videos
from ..files import write_atomic
from ..loop import evaluate
from ..metrics import classification_scores
from ..video_eval import RandomWindowSet, VideoEvaluation, VideoSet, aggregate_video_probs


@torch.inference_mode()
def embed_frames(classifier: FrameClassifier, frames: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """(N, H, W) uint8 frames -> (N, D) float32: the spatial mean of the backbone's feature maps
    (what :meth:`FrameClassifier.embed` computes before its projection)."""
    classifier.eval()
    device = classifier.mean.device
    out = []
    for i in range(0, len(frames), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(frames[i : i + batch_size]))[:, None].to(device)
        out.append(classifier.backbone(classifier.preprocess(x)).mean(dim=(2, 3)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def shrink(frames: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) uint8 -> (N, size, size) uint8 by area averaging (the sampler's own resize)."""
    if frames.shape[1:] == (size, size):
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames))[:, None].float()
    return F.interpolate(x, size=(size, size), mode="area").round_().clamp_(0, 255)[:, 0].to(torch.uint8).numpy()


@dataclass(frozen=True, eq=False)
class EmbeddedVideos:
    """Whole videos as small frames for the sampler and one backbone embedding per frame."""

    small: list[np.ndarray]  # (N_i, f, f) uint8
    emb: list[np.ndarray]  # (N_i, D) float32
    labels: np.ndarray
    names: tuple[str, ...]

    def take(self, index: Sequence[int] | np.ndarray) -> EmbeddedVideos:
        index = list(index)
        return EmbeddedVideos(
            [self.small[i] for i in index],
            [self.emb[i] for i in index],
            np.asarray(self.labels)[index],
            tuple(self.names[i] for i in index),
        )


def embed_videos(
    videos: list[np.ndarray],
    labels: np.ndarray,
    names: Sequence[str],
    *,
    classifier: FrameClassifier,
    feature_size: int,
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> EmbeddedVideos:
    """Embed every frame of ``videos`` (cached under ``cache_dir``, keyed by the frames' bytes,
    the backbone's weights and its input size) and keep a ``feature_size`` copy for the sampler."""
    digest = hashlib.sha256()
    for v in videos:
        digest.update(np.ascontiguousarray(v).tobytes())
    for name, tensor in classifier.backbone.state_dict().items():  # the weights themselves, not their name
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(f"{classifier.backbone_name}|{classifier.input_size}|v1".encode())
    cache = None if cache_dir is None else Path(cache_dir).expanduser() / f"emb-{digest.hexdigest()[:16]}.npz"
    lengths = np.array([len(v) for v in videos])
    table = _read_table(cache, int(lengths.sum()), log) if cache is not None and cache.is_file() else None
    if table is not None:
        log(f"frame embeddings read from {cache}")
    else:
        frames = np.concatenate(videos) if videos else np.zeros((0, 1, 1), np.uint8)
        log(
            f"embedding {len(frames)} frames with the frozen {classifier.backbone_name} backbone at {classifier.input_size} px ..."
        )
        partial = None if cache is None else cache.with_name(cache.stem + ".partial")
        table = embed_in_chunks(classifier, frames, partial, log)
        if cache is not None and partial is not None:
            write_atomic(cache, emb=table)
            shutil.rmtree(partial, ignore_errors=True)
    emb = np.split(table, np.cumsum(lengths)[:-1]) if len(videos) else []
    small = [shrink(v, feature_size) for v in videos]
    return EmbeddedVideos(small, list(emb), np.asarray(labels), tuple(names))


CHUNK = 512  # frames per chunk of the embedding table written while embedding
PROGRESS_SECONDS = 30.0  # at most one progress line per this many seconds


def embed_in_chunks(
    classifier: FrameClassifier, frames: np.ndarray, partial: Path | None, log: Callable[[str], None]
) -> np.ndarray:
    """:func:`embed_frames` chunk by chunk; each finished chunk is written to ``partial``
    (``rows-<start>.npy``) and read back from there by a later call, so an interrupted embedding
    continues where it stopped. Logs the progress with an estimate of the time left."""
    n = len(frames)
    chunks: list[np.ndarray | None] = [None] * ((n + CHUNK - 1) // CHUNK)
    if partial is not None:
        partial.mkdir(parents=True, exist_ok=True)
        for c in range(len(chunks)):
            path = partial / f"rows-{c * CHUNK:09d}.npy"
            try:
                rows = np.load(path) if path.is_file() else None
            except (OSError, ValueError):  # a damaged chunk: embed it again
                rows = None
            if rows is not None and rows.ndim == 2 and len(rows) == min(CHUNK, n - c * CHUNK):
                chunks[c] = rows
        kept = sum(len(c) for c in chunks if c is not None)
        if kept:
            log(f"embedding: {kept} of {n} frames were embedded before (kept in {partial}); embedding the rest")
    todo = sum(min(CHUNK, n - c * CHUNK) for c, rows in enumerate(chunks) if rows is None)
    start = last = time.perf_counter()
    done = 0
    for c, rows in enumerate(chunks):
        if rows is not None:
            continue
        rows = embed_frames(classifier, frames[c * CHUNK : (c + 1) * CHUNK])
        if partial is not None:
            tmp = partial / f".rows-{c * CHUNK:09d}.{os.getpid()}.tmp.npy"
            np.save(tmp, rows)
            tmp.replace(partial / f"rows-{c * CHUNK:09d}.npy")
        chunks[c] = rows
        done += len(rows)
        now = time.perf_counter()
        if now - last >= PROGRESS_SECONDS or done == todo:
            last = now
            per = (now - start) / done
            log(
                f"embedding: {n - todo + done}/{n} frames ({100 * (n - todo + done) / max(n, 1):.0f}%), "
                f"{1000 * per:.0f} ms/frame, about {duration(per * (todo - done))} left"
            )
    ready = [c for c in chunks if c is not None]
    return np.concatenate(ready) if ready else np.zeros((0, 0), np.float32)


def _read_table(cache: Path, rows: int, log: Callable[[str], None]) -> np.ndarray | None:
    """The cached table, or None (logged) when the file is unreadable or does not fit the videos."""
    try:
        with np.load(cache, allow_pickle=False) as npz:
            table = npz["emb"]
    except Exception as exc:  # a damaged or foreign file: embed again and overwrite it
        log(f"embedding cache {cache} is unreadable ({type(exc).__name__}: {exc}); embedding again")
        return None
    if table.ndim != 2 or len(table) != rows:
        log(f"embedding cache {cache} holds {table.shape} rows for {rows} frames; embedding again")
        return None
    return table


@dataclass(frozen=True, eq=False)
class EmbeddedClipSet:
    """Windows with their frames' embeddings; a map-style dataset of ``(x, emb, valid, label)``.

    The same attributes as :class:`~.datasets.ClipSet` (``x`` holds the small frames), plus
    ``emb`` (N, T, D)."""

    x: np.ndarray
    emb: np.ndarray
    valid: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        return (
            torch.from_numpy(self.x[i][:, None]),
            torch.from_numpy(self.emb[i]),
            torch.from_numpy(self.valid[i]),
            int(self.labels[i]),
        )

    @property
    def num_frames(self) -> int:
        return int(self.x.shape[1])


def embedded_windows(ev: EmbeddedVideos, window: int, stride: int) -> tuple[EmbeddedClipSet, np.ndarray]:
    """Every runtime window of every video (as :func:`.video_eval.windows_of_videos` cuts them)."""
    clips, owner = windows_of_videos(ev.small, ev.labels, ev.names, window, stride)
    emb = np.concatenate([cut_windows(e, window, stride)[0] for e in ev.emb])
    return EmbeddedClipSet(clips.x, emb, clips.valid, clips.labels, clips.names), owner


def evaluate_embedded_videos(
    model: SampledClassifier,
    ev: EmbeddedVideos,
    *,
    window: int,
    stride: int,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> VideoEvaluation:
    """:func:`.video_eval.evaluate_videos` on pre-embedded videos: a video's probabilities are
    the mean of its runtime windows'."""
    clips, owner = embedded_windows(ev, window, stride)
    result = evaluate(model, clips, device=torch.device(device), batch_size=batch_size)
    probs = aggregate_video_probs(result.probs, owner, len(ev.labels))
    return VideoEvaluation(
        scores=classification_scores(ev.labels, probs),
        window_scores=result.scores,
        probs=probs,
        labels=np.asarray(ev.labels),
        windows_per_video=np.bincount(owner, minlength=len(ev.labels)),
    )


class FrozenVideos:
    """Every video of a cross-validation embedded once (clean and each corrupted variant)."""

    def __init__(
        self,
        config: ExperimentConfig,
        vs: VideoSet,
        corruption: StreamCorruption | None,
        log: Callable[[str], None],
        device: torch.device | str = "cpu",
    ) -> None:
        m, d = config.model, config.data
        with torch.random.fork_rng(devices=[]):  # a random-init backbone is the same one every time (and cached)
            torch.manual_seed(0)
            classifier = (
                frame_classifier(
                    len(vs.class_names), weights=m.backbone_weights, backbone=m.backbone, input_size=m.input_size
                )
                .to(device)
                .eval()
            )
        log(
            f"frozen backbone {m.backbone} ({classifier.weights_source} weights) at {m.input_size} px; "
            f"sampler frames at {m.feature_size} px"
        )
        every = list(range(len(vs.videos)))

        def embed(videos: list[np.ndarray]) -> EmbeddedVideos:
            return embed_videos(
                videos,
                vs.labels,
                vs.names,
                classifier=classifier,
                feature_size=m.feature_size,
                cache_dir=d.cache_dir,
                log=log,
            )

        self.config = config
        self.backbone = {k: v.detach().cpu().clone() for k, v in classifier.backbone.state_dict().items()}
        self.weights_source = classifier.weights_source
        self.clean = embed(vs.videos)
        self.test_bad = self.train_bad = None
        if corruption is not None:
            self.test_bad = embed(corrupt_videos(vs.videos, corruption, seed=d.corruption_seed, ids=every))
            if d.corruption == "both":
                self.train_bad = self.test_bad  # one realisation per video, wherever it appears

    def splits(
        self, run_config: ExperimentConfig, tr: np.ndarray, va: np.ndarray, te: np.ndarray, class_names
    ) -> DatasetSplits:
        """Training windows (random draws or every runtime window), validation and test windows."""
        d, t = run_config.data, run_config.data.num_frames
        stride = d.window_stride or t
        train = (self.train_bad or self.clean).take(tr)
        val = (self.train_bad or self.clean).take(va)
        train_set: Clips
        if d.train_windows == "random":
            train_set = RandomWindowSet(
                train.small, train.labels, train.names, t, seed=run_config.train.seed, embeddings=train.emb
            )
        elif d.train_windows == "all":
            train_set = embedded_windows(train, t, stride)[0]
        else:
            first = EmbeddedVideos([v[:t] for v in train.small], [e[:t] for e in train.emb], train.labels, train.names)
            train_set = embedded_windows(first, t, t)[0]
        return DatasetSplits(
            train_set,
            embedded_windows(val, t, stride)[0],
            embedded_windows(self.clean.take(te), t, stride)[0],
            class_names=class_names,
        )
