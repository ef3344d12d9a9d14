"""The training loop: Adam, early stopping on validation loss, best-validation weights kept."""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from core.exit import rounds
from sampler.model import SampledClassifier

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .clips import Clips, DatasetSplits
from .config import TrainSettings
from .metrics import Scores, classification_scores, unique_per_window


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) so a run repeats exactly on the same device."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batch_norms(model: torch.nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def set_bn_momentum(model: torch.nn.Module, momentum: float) -> None:
    """Set the running-statistics momentum of every BatchNorm layer (0 leaves them as built)."""
    if momentum > 0:
        for module in batch_norms(model):
            module.momentum = momentum


def restart_bn_statistics(model: torch.nn.Module) -> None:
    """Forget the BatchNorm running statistics; the next batches are averaged with equal weight."""
    for module in batch_norms(model):
        module.reset_running_stats()
        module.momentum = None


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> torch.Tensor | None:
    """Inverse-frequency loss weights (mean 1 over the samples) for ``balanced``; None for ``none``."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = len(labels) / (num_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


@dataclass(frozen=True, eq=False)
class Evaluation:
    """A model's outputs and scores on one split.

    Attributes:
        loss: mean (class-weighted, when weights are given) cross-entropy.
        scores: ROC AUC and balanced accuracy.
        probs: (N, C) softmax probabilities.
        labels: (N,) true labels.
        indices: (N, k) positions the sampler picked.
        unique_frames: mean distinct picks per window.
    """

    loss: float
    scores: Scores
    probs: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    unique_frames: float


@dataclass(frozen=True)
class EpochLog:
    """One epoch: training and validation loss, validation scores, picks, time.

    ``unique_frames`` (``distinct_picks x/k`` in the log line): the mean number of different
    frames among the k a sampler picks per validation window; k means no frame is picked twice,
    fewer means repeated picks (DPS/ADPS draw with replacement)."""

    epoch: int
    train_loss: float
    val_loss: float
    val: Scores
    unique_frames: float
    seconds: float

    def line(self, *, epochs: int, k: int, best: bool) -> str:
        return (
            f"epoch {self.epoch}/{epochs} loss {self.train_loss:.4f} val_loss {self.val_loss:.4f} "
            f"val_auc {self.val.auc:.3f} val_acc {self.val.acc:.1f} distinct_picks {self.unique_frames:.2f}/{k} "
            f"time {self.seconds:.1f}s" + (" *" if best else "")
        )


@dataclass(frozen=True)
class FitResult:
    """The epochs run and which one's weights were kept."""

    history: tuple[EpochLog, ...]
    best_epoch: int
    seconds: float

    @property
    def best(self) -> EpochLog:
        return self.history[self.best_epoch - 1]


def batch_to_device(
    batch: tuple[torch.Tensor, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, valid, y)`` of a batch of ``(x, valid, y)`` or ``(x, emb, valid, y)`` on ``device``:
    uint8 (B, T, 1, H, W) frames become float in [0, 1]."""
    x, valid, y = batch[0], batch[-2], batch[-1]
    return x.to(device, non_blocking=True).float().div_(255.0), valid.to(device), y.to(device)


def clip_loader(clips: Clips, **options: Any) -> DataLoader[tuple[torch.Tensor, ...]]:
    """A ``DataLoader`` over ``clips`` (it reads any map-style dataset; its stub asks for a
    ``Dataset`` subclass, which a split's clips need not be)."""
    return DataLoader(cast("Dataset[tuple[torch.Tensor, ...]]", clips), **options)


def forward_batch(
    model: SampledClassifier, batch: tuple[torch.Tensor, ...], device: torch.device, k: int | None = None
):
    """``model``'s (logits, picks) for a batch of ``(x, valid, y)``, or of ``(x, emb, valid, y)``
    from a set of pre-embedded windows (:mod:`.frozen`), picking ``k`` frames (None: the model's
    k); also returns ``y`` on ``device``."""
    x, valid, y = batch_to_device(batch, device)
    if len(batch) == 4:
        return (*model.forward_embedded(x, batch[1].to(device, non_blocking=True).float(), valid, k), y)
    return (*model(x, valid, k), y)


def scheduled_k(schedule: str, k_max: int, seed: int, epoch: int, batch: int) -> int | None:
    """The k a training batch picks under ``train.k_schedule`` (None: the model's own k). Drawn
    from (seed, epoch, batch) alone, so a resumed run draws the same ks."""
    if schedule == "fixed":
        return None
    return int(np.random.default_rng([seed, epoch, batch, 23]).integers(1, k_max + 1))


@torch.inference_mode()
def evaluate(
    model: SampledClassifier,
    clips: Clips,
    *,
    device: torch.device,
    batch_size: int = 64,
    weight: torch.Tensor | None = None,
    k: int | None = None,
) -> Evaluation:
    """Run ``model`` in eval mode over ``clips`` (in order), picking ``k`` frames (None: the
    model's k), and score it."""
    model.eval()
    loader = clip_loader(clips, batch_size=batch_size, shuffle=False)
    weight = None if weight is None else weight.to(device)
    total, probs, indices = 0.0, [], []
    for batch in loader:
        logits, out, y = forward_batch(model, batch, device, k)
        total += F.cross_entropy(logits.float(), y, weight=weight, reduction="sum").item()
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        indices.append(out.indices.cpu().numpy())
    probs_all, indices_all = np.concatenate(probs), np.concatenate(indices)
    norm = len(clips) if weight is None else float(weight.cpu()[torch.from_numpy(clips.labels)].sum())
    return Evaluation(
        loss=total / norm,
        scores=classification_scores(clips.labels, probs_all),
        probs=probs_all,
        labels=clips.labels,
        indices=indices_all,
        unique_frames=unique_per_window(indices_all),
    )


def exploration(epoch: int, explore_epochs: int) -> float:
    """The Gumbel noise scale of ``epoch`` (1-based) under ``train.explore_epochs``."""
    if explore_epochs <= 0:
        return 1.0
    return max(0.0, 1.0 - (epoch - 1) / explore_epochs)


def fit(
    model: SampledClassifier,
    data: DatasetSplits,
    settings: TrainSettings,
    *,
    device: torch.device,
    log: Callable[[str], None],
    checkpoint: Path | None = None,
    resume: bool = False,
) -> FitResult:
    """Train ``model`` on ``data.train``; stop when ``data.val``'s loss has not improved for
    ``settings.patience`` epochs; load the best-validation weights back into ``model``.

    Only the validation split steers anything (early stopping, the kept weights); the test split
    is never looked at here. Seed the global generators (:func:`seed_everything`) before building
    the model so that initialisation, data order and Gumbel noise all repeat.

    With ``checkpoint`` the state after every epoch is written there; with ``resume`` too,
    training continues from the epoch it holds (the same result as an uninterrupted run on CPU).
    """
    model.to(device)
    if settings.bn_stats == "ema":
        set_bn_momentum(model, settings.bn_momentum)
    weight = class_weights(data.train.labels, len(data.class_names), settings.class_weights)
    weight_dev = None if weight is None else weight.to(device)
    optimizer = torch.optim.Adam(model.param_groups(settings.lr), lr=settings.lr)
    order = torch.Generator().manual_seed(settings.seed)
    loader = clip_loader(data.train, batch_size=settings.batch_size, shuffle=True, generator=order)
    k = model.sampler.k
    schedule = settings.k_schedule if model.config.method != "full" else "fixed"
    history: list[EpochLog] = []
    best_loss, best_epoch, best_state = math.inf, 0, None
    start, first, before = time.perf_counter(), 1, 0.0
    if resume and checkpoint is not None:
        ck = load_checkpoint(checkpoint)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        history, best_loss, best_epoch, best_state = (
            list(ck["history"]),
            ck["best_loss"],
            ck["best_epoch"],
            ck["best_state"],
        )
        set_rng_state(ck["rng"], order)
        first, before = ck["epoch"] + 1, ck["seconds"]
        log(f"resumed from {checkpoint} after epoch {ck['epoch']}")
        if ck["epoch"] - best_epoch >= settings.patience:  # it was stopping early when interrupted
            first = settings.epochs + 1
    built_noise = model.sampler.noise_scale  # the schedule scales the sampler's own noise level
    for epoch in range(first, settings.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        model.sampler.noise_scale = built_noise * exploration(epoch, settings.explore_epochs)
        if settings.bn_stats == "epoch":
            restart_bn_statistics(model)
        total, count = 0.0, 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}",
            leave=False,
            file=sys.stderr,
            disable=not settings.progress or not sys.stderr.isatty(),
        )
        for i, batch in enumerate(bar):
            logits, _, y = forward_batch(model, batch, device, scheduled_k(schedule, k, settings.seed, epoch, i))
            loss = F.cross_entropy(logits, y, weight=weight_dev)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            count += len(y)
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        val = evaluate(model, data.val, device=device, batch_size=settings.eval_batch_size, weight=weight)
        if schedule != "fixed":  # a model for every k: keep the weights that are best over the ladder
            losses = [
                evaluate(model, data.val, device=device, batch_size=settings.eval_batch_size, weight=weight, k=j).loss
                for j in rounds(k)
                if j != k
            ]
            val = dataclasses.replace(val, loss=float(np.mean([val.loss, *losses])))
        entry = EpochLog(epoch, total / count, val.loss, val.scores, val.unique_frames, time.perf_counter() - t0)
        history.append(entry)
        improved = val.loss < best_loss or best_state is None
        if improved:
            best_loss, best_epoch = val.loss, epoch
            best_state = {name: v.detach().to("cpu", copy=True) for name, v in model.state_dict().items()}
        noise = f" noise {model.sampler.noise_scale:.2f}" if settings.explore_epochs else ""
        log(entry.line(epochs=settings.epochs, k=k, best=improved) + noise)
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                epoch=epoch,
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                history=history,
                best_loss=best_loss,
                best_epoch=best_epoch,
                best_state=best_state,
                rng=rng_state(order),
                seconds=before + time.perf_counter() - start,
            )
        if epoch - best_epoch >= settings.patience:
            log(f"early stop: no lower val_loss for {settings.patience} epochs; keeping epoch {best_epoch}")
            break
    model.sampler.noise_scale = built_noise  # an attribute, not saved: leave the model as it was built
    assert best_state is not None  # set in the first epoch
    model.load_state_dict(best_state)
    return FitResult(history=tuple(history), best_epoch=best_epoch, seconds=before + time.perf_counter() - start)
