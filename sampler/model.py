"""A sampler and a classifier as one model, and its one-file format.

A model file is ``torch.save`` of a plain dict, readable with ``torch.load(weights_only=True)``::

    {"format": "das-stream-model", "version": 1, "config": ModelConfig.to_dict(), "state_dict": ...,
     "meta": {...}}

``meta`` (optional; files written before it existed load with ``{}``) holds plain values:
``preprocessing`` (what training did to every clip: ``fps``, ``size``, ``gray``, ``crop``,
``num_frames``, ``long_videos``, ``kind``; ``fps`` is None for volumes), ``training`` (the data
fingerprint, clip counts, the backbone weights requested and used), ``metrics``, ``versions`` and
``created``. ``das-stream info`` prints it; ``run`` applies ``preprocessing``.
"""

from __future__ import annotations

import inspect
import os
import pickle
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import ConfigError, ModelFileError, SamplerError

from .backbones import BACKBONES
from .base import Sampler
from .baselines import ADPSSampler, DPSSampler, FullSampler, RandomSampler, UniformSampler
from .classifier import CLASSIFIER_OPTIONS, MIN_INPUT_SIZE, FrameClassifier, frame_classifier
from .das import DASSampler
from .features import MIN_FEATURE_SIZE, frame_validity
from .output import SamplerOutput

FILE_FORMAT = "das-stream-model"
FILE_VERSION = 1

# The sampler registry: method name -> class. A new sampler is one module plus one line here; the
# order is the order of tables and plots (cheapest baseline first, the paper's method last).
SAMPLERS: dict[str, type[Sampler]] = {
    "full": FullSampler,
    "random": RandomSampler,
    "uniform": UniformSampler,
    "dps": DPSSampler,
    "adps": ADPSSampler,
    "das": DASSampler,
}
METHODS = tuple(SAMPLERS)


def build_sampler(method: str, num_frames: int, k: int, feature_size: int = 64, **kwargs: Any) -> Sampler:
    """The sampler called ``method`` (one of :data:`METHODS`) for windows of ``num_frames``.

    Args:
        method: "full", "uniform", "random", "dps", "adps" or "das".
        num_frames: T.
        k: frames to pick (must be T for "full").
        feature_size: working resolution of the frame features (DAS and ADPS).
        **kwargs: the sampler's own options, e.g. ``heads=4`` for DAS or ``seed=0`` for random.
    """
    if method not in SAMPLERS:
        raise ConfigError(f"unknown sampling method {method!r}; choose one of {', '.join(METHODS)}")
    cls = SAMPLERS[method]
    if "feature_size" in inspect.signature(cls).parameters:
        kwargs = {"feature_size": feature_size, **kwargs}
    try:
        inspect.signature(cls).bind(num_frames=num_frames, k=k, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad option for the {method!r} sampler: {exc}; see {cls.__name__}'s documentation") from exc
    return cls(num_frames=num_frames, k=k, **kwargs)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything needed to rebuild a :class:`SampledClassifier` (saved inside the model file).

    Attributes:
        method: sampler, one of :data:`METHODS`.
        num_frames: T, frames per window.
        k: frames the sampler picks (T for "full").
        class_names: names of the classes, in logit order.
        feature_size: working resolution of the sampler's frame features.
        input_size: side of the frames the classifier's backbone sees.
        backbone: "mobilenet_v3_small" (the paper's) or "tiny_cnn" (fast CPU experiments).
        backbone_weights: initial backbone weights for a new model ("none", "auto",
            "imagenet" or a path); a loaded model takes its weights from the file instead.
        sampler_kwargs: the sampler's own options (plain values).
        classifier_kwargs: FrameClassifier options: embed_dim, hidden, dropout.
        name: a label for reports and MQTT messages.
    """

    method: str
    num_frames: int
    k: int
    class_names: tuple[str, ...]
    feature_size: int = 64
    input_size: int = 224
    backbone: str = "mobilenet_v3_small"
    backbone_weights: str = "none"
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    classifier_kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = "model"

    def __post_init__(self) -> None:
        """The one validator of a model's settings: training configs and model files go through it.

        Each ConfigError carries ``key`` (the field) and ``problem`` (worded to follow the key),
        so a caller can restate it under its own key, e.g. ``model.method in exp.yaml``.
        """

        def bad(key: str, problem: str, lead: str = "") -> ConfigError:
            return ConfigError(f"{lead}{key} {problem}", key=key, problem=problem)

        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "backbone_weights", str(self.backbone_weights))
        if self.method not in SAMPLERS:
            raise bad(
                "method",
                f"must be one of {', '.join(METHODS)}, got {self.method!r}",
                f"unknown sampling method {self.method!r}: ",
            )
        for name in ("num_frames", "k", "feature_size", "input_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise bad(name, f"must be an integer, got {value!r}", "model config ")
        try:
            SAMPLERS[self.method].check_k(self.num_frames, self.k)
        except SamplerError as exc:
            raise ConfigError(str(exc), key="k") from None
        if len(self.class_names) < 2 or len(set(self.class_names)) != len(self.class_names):
            raise bad("class_names", f"must be at least 2 distinct names, got {list(self.class_names)}")
        if self.feature_size < MIN_FEATURE_SIZE:
            raise bad("feature_size", f"must be at least {MIN_FEATURE_SIZE} pixels, got {self.feature_size}")
        if self.input_size < MIN_INPUT_SIZE:
            raise bad("input_size", f"must be at least {MIN_INPUT_SIZE} pixels, got {self.input_size}")
        if self.backbone not in BACKBONES:
            raise bad(
                "backbone",
                f"must be one of {', '.join(BACKBONES)}, got {self.backbone!r}",
                f"unknown backbone {self.backbone!r}: ",
            )
        unknown = sorted(set(self.classifier_kwargs) - set(CLASSIFIER_OPTIONS))
        if unknown:
            raise bad(
                "classifier_kwargs",
                f"may only hold {', '.join(CLASSIFIER_OPTIONS)}, got {unknown}",
                "unknown classifier option(s): ",
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, dicts, str, int, float), as stored in the model file."""
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config key(s) {sorted(unknown)}; known keys: {', '.join(sorted(known))}")
        return cls(**data)


class SampledClassifier(nn.Module):
    """A sampler that picks k of T frames and the classifier that reads them.

    Args:
        config: the model's configuration.
        sampler: the sampler built from it.
        classifier: the classifier built from it.
    """

    def __init__(self, *, config: ModelConfig, sampler: Sampler, classifier: FrameClassifier) -> None:
        super().__init__()
        self.config = config
        self.sampler = sampler
        self.classifier = classifier
        self.meta: dict[str, Any] = {}  # plain values saved with the model (see the module docstring)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """What training did to each clip (``fps``, ``size``, ...); {} for files that do not say."""
        return dict(self.meta.get("preprocessing") or {})

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, k: int | None = None
    ) -> tuple[torch.Tensor, SamplerOutput]:
        """Classify windows ``x`` (B, T, C, H, W) (uint8 or float [0, 1]).

        Returns:
            (logits (B, num_classes), the sampler's output). Picked frames that are padding
            (invalid or empty) are left out of the attention pooling.
        """
        picks = self.sampler(x if x.is_floating_point() else x.float() / 255.0, valid, k)
        mask = frame_validity(x, valid).gather(1, picks.indices)
        return self.classifier(picks.frames, mask), picks

    def forward_embedded(
        self, x: torch.Tensor, emb: torch.Tensor, valid: torch.Tensor | None = None, k: int | None = None
    ) -> tuple[torch.Tensor, SamplerOutput]:
        """Classify windows whose frames were embedded beforehand by this model's (frozen) backbone.

        The result equals :meth:`forward` on the full-resolution window: the sampler picks from
        ``x`` and the picked frames' embeddings are taken from ``emb`` instead of being computed.
        Training with a frozen backbone uses it so that every frame is embedded once, not once
        per epoch (``train.freeze_backbone``).

        Args:
            x: (B, T, C, h, w) the window at (at least) the sampler's feature resolution.
            emb: (B, T, D) backbone embeddings of the same frames (spatial mean of the backbone's
                feature maps, before the classifier's projection).
            valid: (B, T) bool, False for padding.
        """
        if emb.dim() != 3 or emb.shape[:2] != x.shape[:2]:
            raise SamplerError(
                f"embeddings must have shape (B, T, D) with (B, T)={tuple(x.shape[:2])}, got {tuple(emb.shape)}"
            )
        out = self.sampler.select(x if x.is_floating_point() else x.float() / 255.0, valid, k)
        mask = frame_validity(x, valid).gather(1, out.indices)
        return self.classifier.classify(self.classifier.project(out.pick(emb)), mask), out

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, num_classes) class probabilities (call ``eval()`` first for deterministic picks)."""
        return self(x, valid)[0].softmax(dim=1)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: every parameter at ``lr``, DPS logits at their multiplier."""
        fast: list[nn.Parameter] = []
        if isinstance(self.sampler, DPSSampler):
            fast = [self.sampler.logits]
        fast_ids = {id(p) for p in fast}
        groups = [{"params": [p for p in self.parameters() if id(p) not in fast_ids], "lr": lr}]
        if fast:
            groups.append({"params": fast, "lr": lr * self.sampler.logit_lr_multiplier})
        return groups

    def save(self, path: str | os.PathLike) -> None:
        """Write the model (config and weights) to ``path`` in the das-stream model format."""
        payload = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "config": self.config.to_dict(),
            "state_dict": {key: value.detach().cpu() for key, value in self.state_dict().items()},
        }
        if self.meta:
            payload["meta"] = self.meta
        torch.save(payload, Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SampledClassifier:
        """Read a model written by :meth:`save`; raises ModelFileError naming the file otherwise."""
        path = Path(path)
        payload = _read_model_file(path, map_location)
        try:
            config = ModelConfig.from_dict(payload["config"])
            model = build_model(config, load_backbone_weights=False)
            model.load_state_dict(payload["state_dict"])
            model.meta = dict(payload.get("meta") or {})
        except (ConfigError, KeyError, TypeError, RuntimeError) as exc:
            raise ModelFileError(
                f"model file {path} does not match this version of das-stream ({exc}); retrain or re-export it"
            ) from exc
        return model.to(map_location)


def _read_model_file(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist; check the path or train a model first")
    with path.open("rb") as file:
        head = file.read(4)
    zipped = head.startswith(b"PK\x03\x04")  # torch.save's format since PyTorch 1.6
    if head and not zipped and not head.startswith(b"\x80"):  # neither a zip nor a pickle
        raise ModelFileError(
            f"model file {path} is not a das-stream model file (not a PyTorch file at all); "
            "pass a model written by `das-stream train` or SampledClassifier.save"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not zipped:
            raise ModelFileError(
                f"model file {path} is not a das-stream model file (unreadable legacy pickle); "
                "pass a model written by `das-stream train` or SampledClassifier.save"
            ) from exc
        raise ModelFileError(
            f"model file {path} is not a das-stream model (it holds Python objects, not plain weights); "
            "save models with SampledClassifier.save"
        ) from exc
    except Exception as exc:  # truncated zip, empty file, not a torch file at all
        raise ModelFileError(
            f"model file {path} is truncated or not a PyTorch file ({type(exc).__name__}: {exc}); re-save or re-copy it"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
        raise ModelFileError(
            f"model file {path} is a PyTorch file but not a das-stream model; pass a file written by SampledClassifier.save"
        )
    if payload.get("version") != FILE_VERSION:
        raise ModelFileError(
            f"model file {path} has format version {payload.get('version')!r}, this das-stream reads version {FILE_VERSION}; "
            "use the das-stream release that wrote it or re-export the model"
        )
    return payload


def build_model(config: ModelConfig, *, load_backbone_weights: bool = True) -> SampledClassifier:
    """A new :class:`SampledClassifier` for ``config``.

    Args:
        config: the configuration.
        load_backbone_weights: load ``config.backbone_weights`` into the backbone (False when
            the weights come from a model file anyway).
    """
    sampler = build_sampler(config.method, config.num_frames, config.k, config.feature_size, **config.sampler_kwargs)
    classifier = frame_classifier(
        len(config.class_names),
        input_size=config.input_size,
        weights=config.backbone_weights if load_backbone_weights else "none",
        backbone=config.backbone,
        **config.classifier_kwargs,
    )
    return SampledClassifier(config=config, sampler=sampler, classifier=classifier)
