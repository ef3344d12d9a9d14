"""The torch implementation of the window model (:class:`sampler.package.WindowModel`): a
:class:`SampledClassifier` behind numpy in, numpy out. Imported only when a torch model is run.

On a GPU the sampler and the head run where they are faster for a given number of windows (a
GPU is launch-bound for one window): :meth:`TorchWindowModel.warm_up` times both devices.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import ModelFileError

from .baselines import DPSSampler, FullSampler, RandomSampler, UniformSampler
from .das import DASSampler
from .device import resolve_device
from .features import NUM_FEATURES, frame_stats, with_motion
from .model import SampledClassifier
from .package_file import PACKAGE_FORMAT, PACKAGE_VERSION, is_package


def sampler_card(model: SampledClassifier) -> dict[str, Any]:
    """The sampler's order rule as a package stores it (see :mod:`sampler.package`);
    ``exportable`` False (with ``why``) for samplers a package cannot run."""
    s, method = model.sampler, model.config.method
    if isinstance(s, FullSampler):
        return {"order": "all"}
    if isinstance(s, UniformSampler):
        return {"order": "uniform", "nested": s.nested}
    if isinstance(s, RandomSampler):
        return {"order": "random", "seed": s.seed}
    if isinstance(s, DPSSampler):
        return {"order": "logits", "logits": s.logits.detach().float().cpu().tolist()}
    if isinstance(s, DASSampler):
        if s.paper_exact:
            return {"order": "sampler", "exportable": False, "why": "DAS with paper_exact=True may repeat its picks"}
        if not s.uses_frame_features:
            return {
                "order": "sampler",
                "exportable": False,
                "why": f"DAS with {s.features} features pools adaptively, which ONNX cannot express",
            }
        return {
            "order": "segments" if s.selection == "segments" else "scores",
            "stats": True,
            "stats_dim": NUM_FEATURES - 1,
        }
    return {
        "order": "sampler",
        "exportable": False,
        "why": f"the {method} sampler's picks depend on each other step by step (an LSTM)",
    }


def window_card(model: SampledClassifier, source: str | os.PathLike | None = None) -> dict[str, Any]:
    """The card of a torch model: what a package exported from it says about itself."""
    c, meta = model.config, model.meta
    return {
        "format": PACKAGE_FORMAT,
        "version": PACKAGE_VERSION,
        "name": c.name,
        "method": c.method,
        "class_names": list(c.class_names),
        "num_frames": c.num_frames,
        "k": c.k,
        "feature_size": c.feature_size,
        "input_size": c.input_size,
        "embed_dim": model.classifier.embed_dim,
        "backbone": c.backbone,
        "preprocessing": model.preprocessing or {"size": c.input_size, "gray": True, "fps": None},
        "sampler": sampler_card(model),
        "exit": meta.get("exit"),  # the early-exit rule (core.exit.ExitRule.to_dict()); None: fixed k
        "provenance": {
            "source": str(source) if source else None,
            "config": c.to_dict(),
            "training": meta.get("training"),
            "metrics": meta.get("metrics"),
            "split": meta.get("split"),  # which samples trained, validated and tested it (evaluate reuses it)
            "versions": meta.get("versions"),
            "created": meta.get("created"),
        },
    }


class TorchWindowModel:
    """A :class:`SampledClassifier` as a window model.

    Args:
        model: the model (put in eval mode here).
        device: "auto", "cpu", "cuda[:N]" or a torch.device.
        path: the file it came from (for the card and logs).
    """

    kind = "torch"

    def __init__(
        self, model: SampledClassifier, device: str | torch.device = "auto", *, path: str | os.PathLike | None = None
    ) -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.eval().to(self.device)
        self.path = Path(path) if path else None
        cfg = model.config
        self.name, self.method = cfg.name, cfg.method
        self.num_frames, self.k = cfg.num_frames, cfg.k
        self.feature_size, self.input_size = cfg.feature_size, cfg.input_size
        self.embed_dim = model.classifier.embed_dim
        self.class_names = tuple(cfg.class_names)
        self.preprocessing = model.preprocessing
        self.card = window_card(model, path)
        # DAS and ADPS read per-frame features that a runtime can make as each frame arrives.
        self.uses_stats = model.sampler.uses_frame_features
        self._step_models = {self.device: self.model}
        if self.device.type != "cpu":
            self._step_models[torch.device("cpu")] = copy.deepcopy(self.model).cpu()
        self._step_device: dict[int, torch.device] = {}

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "auto") -> TorchWindowModel:
        return cls(SampledClassifier.load(path), device, path=path)

    def __repr__(self) -> str:
        return f"TorchWindowModel({self.name!r}, {self.method}, k={self.k} of T={self.num_frames}, {self.device})"

    def _step(self, batch: int) -> tuple[torch.device, SampledClassifier]:
        step = self._step_device.get(batch, self.device)
        return step, self._step_models[step]

    @torch.inference_mode()
    def frame_stats(self, small: np.ndarray) -> np.ndarray:
        return frame_stats(torch.from_numpy(small).unsqueeze(1), self.feature_size).numpy()

    @torch.inference_mode()
    def order(self, small: np.ndarray, stats: np.ndarray | None, usable: np.ndarray) -> np.ndarray:
        step, model = self._step(len(small))
        ok = torch.from_numpy(usable).to(step)
        if stats is not None and self.uses_stats:
            raw = with_motion(torch.from_numpy(stats), torch.from_numpy(small)).to(step)
            order = model.sampler.order_features(raw, ok)
            attention = getattr(model.sampler, "attention_from_features", None)
        else:
            raw = torch.from_numpy(small).unsqueeze(2).to(step)  # uint8: the sampler scales it
            order = model.sampler.order(raw, ok)
            attention = getattr(model.sampler, "attention", None)
        # the per-frame scores that order ranked by (DAS: a_base; a second, small pass), for the web view
        self.last_scores = attention(raw, ok).base.float().cpu().numpy() if callable(attention) else None
        return order.cpu().numpy()

    @torch.inference_mode()
    def embed(self, frames: np.ndarray) -> np.ndarray:
        """The backbone in eager torch on gray uint8 frames (N, S, S), on the model's device."""
        return self.model.classifier.embed(torch.from_numpy(frames).unsqueeze(1).to(self.device)).float().cpu().numpy()

    @torch.inference_mode()
    def head(self, emb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        step, model = self._step(len(emb))
        logits = model.classifier.classify(torch.from_numpy(emb).to(step), torch.from_numpy(mask).to(step))
        return torch.softmax(logits.float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def warm_up(self, max_windows: int) -> None:
        """Run order and head for 1..max_windows windows on each candidate device, keeping the
        faster one per count (the first call pays the new shape, the second is timed)."""
        T, fs = self.num_frames, self.feature_size
        stats = self.frame_stats(np.zeros((1, fs, fs), np.uint8)) if self.uses_stats else None
        for B in range(1, max_windows + 1):
            small = np.zeros((B, T, fs, fs), np.uint8)
            window_stats = np.repeat(stats[None], B * T, 0).reshape(B, T, -1) if stats is not None else None
            emb, mask = np.zeros((B, self.k, self.embed_dim), np.float32), np.ones((B, self.k), bool)
            times = {}
            for dev in list(self._step_models):
                self._step_device[B] = dev
                for _ in range(2):
                    t = time.perf_counter()
                    self.order(small, window_stats, np.ones((B, T), bool))
                    self.head(emb, mask)
                    times[dev] = time.perf_counter() - t
            self._step_device[B] = min(times, key=times.__getitem__)


def load_torch_model(path: str | os.PathLike) -> SampledClassifier:
    """A torch model file; a package gets a one-line error saying what to pass instead."""
    if is_package(path):
        raise ModelFileError(
            f"{path} is a model package (ONNX); this command needs the torch model file it was exported from"
        )
    return SampledClassifier.load(path)
