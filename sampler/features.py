"""Non-learned per-frame features: the lightweight pathways the samplers look at.

Every feature is computed at a small working resolution (``size`` x ``size``, 64 by default):
the window is area-resized once, then Sobel and Laplacian filters are taken by array slicing
(a 3x3 ``conv2d`` with one channel is several times slower in eager torch on a CPU). Energies
are log-compressed so that a bright, busy frame and a dark, quiet one land on comparable scales.

The features of one frame, in the order of :data:`FEATURE_NAMES`:

- ``mean``: mean intensity (gray, [0, 1]);
- ``variance``: log of the intensity variance over space and channels;
- ``sobel_x``, ``sobel_y``: log of the mean absolute Sobel response along x and along y;
- ``sobel``: log of the mean Sobel edge magnitude sqrt(gx^2 + gy^2);
- ``laplacian``: log of the mean absolute Laplacian;
- ``motion``: log of the mean absolute difference to the previous frame (the first frame of a
  window uses the difference to the next one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.errors import SamplerError

FEATURE_NAMES: tuple[str, ...] = ("mean", "variance", "sobel_x", "sobel_y", "sobel", "laplacian", "motion")
NUM_FEATURES = len(FEATURE_NAMES)

_LOG_EPS = 1e-3  # floor of the log-compressed energies: an empty frame sits at log(1e-3) ~ -6.9
_STD_EPS = 1e-3  # floor of the standard deviation in standardize_over_time


MIN_FEATURE_SIZE = 3  # the smallest working resolution the features are defined for


def as_float_window(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` as floats in [0, 1]: uint8 is divided by 255, floats are returned as they are."""
    return x if x.is_floating_point() else x.float().div_(255.0)


def frame_validity(x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) bool: True for frames a sampler may prefer.

    A frame is invalid when ``valid`` says so or when it is empty (all zeros), which is how
    windows are padded to T frames.

    Args:
        x: window (B, T, C, H, W), any resolution and dtype.
        valid: optional (B, T) mask, True for real frames.
    """
    nonempty = x.flatten(2).amax(dim=2) > 0
    return nonempty if valid is None else nonempty & valid.to(device=x.device, dtype=torch.bool)


def _log_energy(v: torch.Tensor) -> torch.Tensor:
    return torch.log(v + _LOG_EPS)


def frame_features(x: torch.Tensor, size: int = 64) -> torch.Tensor:
    """Per-frame features of a window, (B, T, NUM_FEATURES) float32.

    Args:
        x: window (B, T, C, H, W), float in [0, 1] or uint8, C in {1, 3}, any H and W. Frames
            that are not ``size`` x ``size`` are area-resized first (pass a window that is
            already at that size to skip it: this is what a streaming runtime does).
        size: working resolution, at least 3.
    """
    b, t, c, h, w = x.shape
    stats, gray = _frame_stats(x.reshape(b * t, c, h, w), size)
    return with_motion(stats.reshape(b, t, NUM_FEATURES - 1), gray.reshape(b, t, size, size))


def frame_stats(frames: torch.Tensor, size: int = 64) -> torch.Tensor:
    """The features of :func:`frame_features` that depend on one frame alone (all but ``motion``),
    (N, NUM_FEATURES - 1), for frames (N, C, H, W): a streaming runtime computes them as each
    frame arrives and adds the motion, which needs the window, with :func:`with_motion`."""
    return _frame_stats(frames, size)[0]


def with_motion(stats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, T, NUM_FEATURES): per-frame ``stats`` (B, T, NUM_FEATURES - 1) and the motion feature
    of the window ``x`` (B, T, size, size) (gray, float in [0, 1] or uint8)."""
    b, t = x.shape[:2]
    with torch.no_grad():
        gray_bt = as_float_window(x).reshape(b, t, -1).float()
        if t > 1:
            step = (gray_bt[:, 1:] - gray_bt[:, :-1]).abs_().mean(dim=2)  # (B, T-1)
            motion = torch.cat([step[:, :1], step], dim=1)
        else:
            motion = torch.zeros(b, t, device=x.device)
        return torch.cat([stats, _log_energy(motion).unsqueeze(2)], dim=2)


def _frame_stats(x: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, NUM_FEATURES - 1) per-frame features and the (N, size, size) gray working frames."""
    if size < MIN_FEATURE_SIZE:
        raise SamplerError(f"feature size must be at least {MIN_FEATURE_SIZE} pixels, got {size}; use e.g. 64")
    n, c, h, w = x.shape
    with torch.no_grad():
        frames = as_float_window(x).float()
        if (h, w) != (size, size):
            frames = F.interpolate(frames, size=(size, size), mode="area")
        flat = frames.flatten(1)
        variance = ((flat * flat).mean(dim=1) - flat.mean(dim=1) ** 2).clamp_min_(0.0)  # over space and channels
        gray = frames.mean(dim=1)  # (N, s, s)

        dx = gray[:, :, 2:] - gray[:, :, :-2]  # central differences, smoothed across rows: Sobel x
        gx = (dx[:, :-2] + dx[:, 2:]).add_(dx[:, 1:-1], alpha=2)
        dy = gray[:, 2:, :] - gray[:, :-2, :]  # ... and across columns: Sobel y
        gy = (dy[:, :, :-2] + dy[:, :, 2:]).add_(dy[:, :, 1:-1], alpha=2)
        laplacian = (gray[:, :-2, 1:-1] + gray[:, 2:, 1:-1]).add_(gray[:, 1:-1, :-2]).add_(gray[:, 1:-1, 2:])
        laplacian.sub_(gray[:, 1:-1, 1:-1], alpha=4)
        magnitude = (gx * gx).addcmul_(gy, gy).sqrt_().mean(dim=(1, 2))
        sobel_x, sobel_y, laplacian = torch.stack([gx, gy, laplacian], dim=1).abs_().mean(dim=(2, 3)).unbind(1)
        edges = torch.stack([sobel_x, sobel_y, magnitude, laplacian], dim=1)  # (N, 4)
        energies = _log_energy(torch.cat([variance.unsqueeze(1), edges], dim=1))  # (N, 5)
        return torch.cat([gray.mean(dim=(1, 2)).unsqueeze(1), energies], dim=1), gray


def standardize_over_time(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Z-score each feature over the valid frames of its window; invalid frames get 0.

    This makes the features say how a frame differs from the rest of its window, which is what
    a frame selector needs, independent of the overall brightness or texture of the clip.

    Args:
        features: (B, T, d).
        valid: (B, T) bool.
    """
    weight = valid.unsqueeze(2).to(features.dtype)
    count = weight.sum(dim=1, keepdim=True).clamp_min(1.0)
    mean = (features * weight).sum(dim=1, keepdim=True) / count
    var = ((features - mean) ** 2 * weight).sum(dim=1, keepdim=True) / count
    return (features - mean) / torch.sqrt(var + _STD_EPS**2) * weight


def masked_pool(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, 2d): mean and max of ``features`` (B, T, d) over the valid frames of each window.

    A window without any valid frame pools over all its frames.
    """
    valid = valid | ~valid.any(dim=1, keepdim=True)
    weight = valid.unsqueeze(2).to(features.dtype)
    mean = (features * weight).sum(dim=1) / weight.sum(dim=1)
    maximum = features.masked_fill(~valid.unsqueeze(2), float("-inf")).amax(dim=1)
    return torch.cat([mean, maximum], dim=1)
