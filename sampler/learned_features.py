"""A learned feature pathway for DAS (the paper's future work), beside the hand-made features.

The hand-made descriptor (:mod:`sampler.features`) summarises each frame with fixed statistics.
:class:`LearnedFrameFeatures` is a very small CNN on the sampler's low-resolution copy of each
frame (the frame area-pooled to ``size`` x ``size``, 12 by default): two 3x3 convolutions with
stride 2 and ReLU, then the spatial mean and max of the last map, ``2 * channels[-1]`` numbers per
frame. It is trained end to end with the classifier through DAS's straight-through Gumbel
selection. Like the hand-made features, DAS sees each learned feature z-scored over the window
(how a frame stands out) next to its raw value.

Its cost per window (T frames) is kept under 5 % of the classifier's (k frames): with the
defaults, 3.9 k multiply-accumulates per frame (tiny_cnn at 32 px: 1.0 M per frame); :func:`count_macs` measures both and
``tests/sampler/test_learned_features.py`` checks the budget for the configurations we train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .features import as_float_window, standardize_over_time


class LearnedFrameFeatures(nn.Module):
    """(B, T, C, H, W) window -> (B, T, 2 * channels[-1]) learned per-frame features.

    Args:
        size: side of the low-resolution copy the CNN sees.
        channels: output channels of the two convolutions.
    """

    def __init__(self, *, size: int = 12, channels: tuple[int, int] = (4, 8)) -> None:
        super().__init__()
        self.size = int(size)
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU()
        )
        self.dim = 2 * c2

    def low_res(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> (B*T, 1, size, size) gray floats in [0, 1]."""
        frames = as_float_window(x.flatten(0, 1)).mean(dim=1, keepdim=True)
        return F.adaptive_avg_pool2d(frames, self.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        maps = self.net(self.low_res(x))
        return torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=1).view(b, t, -1)


class LearnedDescriptor(nn.Module):
    """DAS input from the learned features: z-scored over the window next to the raw values."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.features = LearnedFrameFeatures(**kwargs)
        self.dim = 2 * self.features.dim

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        raw = self.features(x)
        return torch.cat([standardize_over_time(raw, valid), raw * valid.unsqueeze(2)], dim=2)


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of the Conv2d and Linear layers in one forward pass of ``module``."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total
