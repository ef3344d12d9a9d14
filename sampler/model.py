"""A sampler and a classifier as one model: its settings, its builder and its file.

The file format (and every reading and writing of it) is :mod:`sampler.model_file`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
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
from .model_file import ModelFile, read_model_file, write_model_file
from .output import SamplerOutput

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


def _bad(key: str, problem: str, lead: str = "") -> ConfigError:
    return ConfigError(f"{lead}{key} {problem}", key=key, problem=problem)


def _need_int(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise _bad(name, f"must be an integer, got {value!r}", "model config ")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What a model is made of, before the data fixes its T and classes: the settings a person
    chooses (a training config's ``model`` section is these plus ``keep``).

    Validated on construction; each ConfigError carries ``key`` (the field) and ``problem``
    (worded to follow the key), so a caller can restate it under its own key, e.g.
    ``model.method in exp.yaml``.

    Attributes:
        method: sampler, one of :data:`METHODS`.
        feature_size: working resolution of the sampler's frame features.
        input_size: side of the frames the classifier's backbone sees; 0 (the default) takes
            the backbone's own (``Backbone.input_size``, 224 for the ImageNet backbones).
        backbone: a name of :data:`sampler.backbones.BACKBONES`: ``mobilenet_v3_small`` (the
            paper's), ``tiny_cnn`` (fast CPU experiments) or ``efficientnet_lite0``.
        backbone_weights: initial backbone weights of a new model: ``none``, ``auto`` (ImageNet
            when at hand without a download, else random init), ``imagenet`` or a path; a loaded
            model takes its weights from its file instead.
        sampler: the sampler's own options (plain values), e.g. ``{"heads": 4}`` for DAS.
        classifier: FrameClassifier options: ``embed_dim``, ``hidden``, ``dropout``.
    """

    method: str = "das"
    feature_size: int = 64
    input_size: int = 0
    backbone: str = "mobilenet_v3_small"
    backbone_weights: str = "auto"
    sampler: Mapping[str, Any] = field(default_factory=dict)
    classifier: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "backbone_weights", str(self.backbone_weights))
        object.__setattr__(self, "sampler", dict(self.sampler))
        object.__setattr__(self, "classifier", dict(self.classifier))
        if self.method not in SAMPLERS:
            raise _bad(
                "method",
                f"must be one of {', '.join(METHODS)}, got {self.method!r}",
                f"unknown sampling method {self.method!r}: ",
            )
        if self.backbone not in BACKBONES:
            raise _bad(
                "backbone",
                f"must be one of {', '.join(BACKBONES)}, got {self.backbone!r}",
                f"unknown backbone {self.backbone!r}: ",
            )
        _need_int(self, "feature_size", "input_size")
        if self.input_size == 0:
            object.__setattr__(self, "input_size", BACKBONES[self.backbone].input_size)
        if self.feature_size < MIN_FEATURE_SIZE:
            raise _bad("feature_size", f"must be at least {MIN_FEATURE_SIZE} pixels, got {self.feature_size}")
        if self.input_size < MIN_INPUT_SIZE:
            raise _bad("input_size", f"must be at least {MIN_INPUT_SIZE} pixels, got {self.input_size}")
        unknown = sorted(set(self.classifier) - set(CLASSIFIER_OPTIONS))
        if unknown:
            raise _bad(
                "classifier",
                f"may only hold {', '.join(CLASSIFIER_OPTIONS)}, got {unknown}",
                "unknown classifier option(s): ",
            )

    def spec(self) -> ModelSpec:
        """The :class:`ModelSpec` fields alone (of a subclass, e.g. a training config's section)."""
        return ModelSpec(**{f.name: getattr(self, f.name) for f in fields(ModelSpec)})


@dataclass(frozen=True, kw_only=True)
class ModelConfig(ModelSpec):
    """Everything needed to rebuild a :class:`SampledClassifier` (saved inside the model file):
    the :class:`ModelSpec` plus what the data fixes.

    Attributes:
        num_frames: T, frames per window.
        k: frames the sampler picks (T for "full").
        class_names: names of the classes, in logit order.
        name: a label for reports and MQTT messages.
    """

    num_frames: int
    k: int
    class_names: tuple[str, ...]
    name: str = "model"

    def __post_init__(self) -> None:
        """The one validator of a model's settings: training configs and model files go through it."""
        super().__post_init__()
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        _need_int(self, "num_frames", "k")
        try:
            SAMPLERS[self.method].check_k(self.num_frames, self.k)
        except SamplerError as exc:
            raise ConfigError(str(exc), key="k", problem=str(exc)) from None
        if len(self.class_names) < 2 or len(set(self.class_names)) != len(self.class_names):
            raise _bad("class_names", f"must be at least 2 distinct names, got {list(self.class_names)}")

    @classmethod
    def for_data(
        cls, spec: ModelSpec, *, num_frames: int, keep: float, class_names: tuple[str, ...], name: str = "model"
    ) -> ModelConfig:
        """The model ``spec`` sized to the data: T frames, ``keep`` of them picked (the method's
        rule, :meth:`Sampler.frames_to_keep`), these classes."""
        return cls(
            **asdict(spec.spec()),
            num_frames=num_frames,
            k=SAMPLERS[spec.method].frames_to_keep(num_frames, keep),
            class_names=class_names,
            name=name,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, dicts, str, int, float), as stored in the model file."""
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
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
        sampler = self.sampler
        if not isinstance(sampler, DPSSampler):
            return [{"params": list(self.parameters()), "lr": lr}]
        fast = sampler.logits
        rest = [p for p in self.parameters() if p is not fast]
        return [{"params": rest, "lr": lr}, {"params": [fast], "lr": lr * sampler.logit_lr_multiplier}]

    def save(self, path: str | os.PathLike) -> None:
        """Write the model (config, weights and meta) to ``path`` (:mod:`sampler.model_file`)."""
        write_model_file(path, ModelFile(config=self.config.to_dict(), state_dict=self.state_dict(), meta=self.meta))

    @classmethod
    def load(cls, source: str | os.PathLike | bytes, map_location: str | torch.device = "cpu") -> SampledClassifier:
        """Read a model written by :meth:`save` (a path, or the file's bytes); raises
        ModelFileError naming the file otherwise."""
        contents = read_model_file(source, map_location)
        try:
            model = build_model(ModelConfig.from_dict(contents.config), load_backbone_weights=False)
            model.load_state_dict(contents.state_dict)
        except (ConfigError, KeyError, TypeError, RuntimeError) as exc:
            name = "(bytes)" if isinstance(source, bytes) else source
            raise ModelFileError(
                f"model file {name} does not match this version of das-stream ({exc}); retrain or re-export it"
            ) from exc
        model.meta = contents.meta
        return model.to(map_location)


def build_model(config: ModelConfig, *, load_backbone_weights: bool = True) -> SampledClassifier:
    """A new :class:`SampledClassifier` for ``config``.

    Args:
        config: the configuration.
        load_backbone_weights: load ``config.backbone_weights`` into the backbone (False when
            the weights come from a model file anyway).
    """
    sampler = build_sampler(config.method, config.num_frames, config.k, config.feature_size, **config.sampler)
    classifier = frame_classifier(
        len(config.class_names),
        input_size=config.input_size,
        weights=config.backbone_weights if load_backbone_weights else "none",
        backbone=config.backbone,
        **config.classifier,
    )
    return SampledClassifier(config=config, sampler=sampler, classifier=classifier)
