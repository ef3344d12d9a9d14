"""``tiny_cnn``: four strided 3x3 conv blocks, 128-d, no pretrained weights.

A stand-in for quick CPU experiments and tests, where MobileNet's ~50 layers cost more than the
task needs.
"""

from __future__ import annotations

from torch import nn

FEATURE_DIM = 128


def tiny_cnn() -> nn.Sequential:
    """Four blocks of 3x3 convolution (stride 2), batch norm and ReLU: 3 -> 16 -> 32 -> 64 -> 128."""
    layers: list[nn.Module] = []
    channels = (3, 16, 32, 64, FEATURE_DIM)
    for c_in, c_out in zip(channels, channels[1:]):
        layers += [
            nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)
