"""Ultrasound-like synthetic lung clips, and a source that streams them.

Every frame shows a convex-probe fan with speckle, a chest wall, and a bright pleural line that
slides sideways a little from frame to frame (lung sliding). The class pattern appears on SOME
frames only (it flickers in and out in runs, different per clip), so which frames are informative
varies: exactly the situation a learned frame selector is for. Occasional runs of all-zero frames
mimic lost probe contact.

Classes (``CLASSES``):
    ``a_lines``: horizontal reverberation arcs repeating the pleural line at 2x and 3x its depth
    (normal aerated lung).
    ``b_lines``: vertical comet-tail streaks from the pleura to the bottom of the fan, moving with
    the sliding (interstitial syndrome).
    ``consolidation``: tissue-like, speckled region under the pleura with a ragged lower border
    and bright air-bronchogram dots (pneumonia).

Everything is vectorised numpy over (T, H, W); 32 frames of 128x128 take 10-20 ms.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from core.bounds import check
from core.errors import SourceError

from .base import PacedSource
from .image import OutputFormat, normalise_size
from .options import Converter, merge_query, optional_int, typed

CLASSES: tuple[str, ...] = ("a_lines", "b_lines", "consolidation")

_HALF_ANGLE = 0.62  # half opening of the fan, radians
_APEX = 0.3  # apex of the fan above the image top, in image heights
_SKIN = 0.02  # gap between the apex arc and the skin line, in image heights
_SPAN = 0.95  # depth of the fan from skin line to bottom, in image heights


def class_index(label: int | str) -> int:
    """The index in ``CLASSES`` of a class given by index or name; SourceError if unknown."""
    if isinstance(label, str):
        if label in CLASSES:
            return CLASSES.index(label)
    elif isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(CLASSES):
        return int(label)
    raise SourceError(
        f"unknown synthetic class {label!r}; use one of {', '.join(CLASSES)} or an index below {len(CLASSES)}"
    )


@dataclass(frozen=True)
class SyntheticClip:
    """One generated clip.

    Attributes:
        frames: (T, H, W) uint8.
        evidence: (T,) bool, True where the class pattern is visible (the informative frames).
        empty: (T,) bool, True for the all-zero frames of a lost-contact run.
        label: the class name.
    """

    frames: np.ndarray
    evidence: np.ndarray
    empty: np.ndarray
    label: str


@dataclass(frozen=True)
class _Geometry:
    """The probe's polar grid (depth x angle) and its scan conversion to a square image."""

    depth: np.ndarray  # (D,) float32 in [0, 1], skin line to bottom of the fan
    angle: np.ndarray  # (A,) float32 in [-_HALF_ANGLE, _HALF_ANGLE]
    source: np.ndarray  # (H, W) intp: flat polar index of each pixel, D * A (a zero) outside the fan


@functools.lru_cache(maxsize=8)
def _geometry(size: int) -> _Geometry:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)
    x -= 0.5
    r = np.hypot(x, y + _APEX)
    theta = np.arctan2(x, y + _APEX)
    depth = (r - _APEX - _SKIN) / _SPAN
    fan = (np.abs(theta) <= _HALF_ANGLE) & (depth >= 0) & (depth <= 1)
    d_idx = np.clip(np.rint(depth * (size - 1)), 0, size - 1).astype(np.intp)
    a_idx = np.clip(np.rint((theta / _HALF_ANGLE + 1) / 2 * (size - 1)), 0, size - 1).astype(np.intp)
    source = np.where(fan, d_idx * size + a_idx, size * size)
    return _Geometry(
        depth=np.linspace(0, 1, size, dtype=np.float32),
        angle=np.linspace(-_HALF_ANGLE, _HALF_ANGLE, size, dtype=np.float32),
        source=source,
    )


@functools.lru_cache(maxsize=1)
def _rayleigh_levels() -> np.ndarray:
    """256 quantiles of a unit-mean Rayleigh law: speckle amplitude from one random byte."""
    u = (np.arange(256, dtype=np.float64) + 0.5) / 256
    levels = np.sqrt(-2 * np.log1p(-u))
    return (levels / levels.mean()).astype(np.float32)


def _runs(num_frames: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A (T,) bool mask covering about ``fraction`` of the frames in 1-3 contiguous runs."""
    mask = np.zeros(num_frames, dtype=bool)
    count = int(rng.integers(1, 4))
    length = max(1, int(round(fraction * num_frames / count)))
    for start in rng.integers(0, max(1, num_frames - length + 1), size=count):
        mask[start : start + length] = True
    return mask


def _lateral_texture(
    angle: np.ndarray, shift: np.ndarray, rng: np.random.Generator, *, freq: tuple[float, float]
) -> np.ndarray:
    """A smooth random texture along the angle, shifted per frame: (T, A), about [0, 1]."""
    freqs = rng.uniform(*freq, size=4).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=4).astype(np.float32)
    arg = (angle[None, :, None] - shift[:, None, None]) * freqs + phase
    return 0.5 + 0.5 * np.sin(arg).mean(axis=-1) * 1.6


def _gauss(z: np.ndarray) -> np.ndarray:
    return np.exp(-(z * z))


def _add_band(image: np.ndarray, profile: np.ndarray, lateral: np.ndarray) -> None:
    """image (T, D, A) += profile (D,) x lateral (T, A), only over the rows where profile is on."""
    rows = np.flatnonzero(profile > 1e-3)
    if rows.size:
        lo, hi = rows[0], rows[-1] + 1
        image[:, lo:hi] += profile[lo:hi, None] * lateral[:, None, :]


def render_clip(
    label: int | str,
    num_frames: int,
    *,
    size: int = 128,
    rng: np.random.Generator,
    empty_run_prob: float = 0.25,
) -> SyntheticClip:
    """Generate one clip with its per-frame evidence mask.

    The clip is drawn in the probe's own coordinates (depth x angle), where every structure is
    a depth profile times a lateral profile, then scan-converted to the fan like a scanner does.

    Args:
        label: class index or name from ``CLASSES``.
        num_frames: T, the number of frames.
        size: frame height and width in pixels.
        rng: the random generator (the clip is a pure function of its state).
        empty_run_prob: probability that the clip holds one run of all-zero frames
            (lost probe contact), at most a quarter of the clip long.
    """
    name = CLASSES[class_index(label)]
    if num_frames < 1 or size < 16:
        raise SourceError(f"synthetic clip needs num_frames >= 1 and size >= 16, got {num_frames} and {size}")
    geo = _geometry(size)
    depth, angle = geo.depth, geo.angle
    t = np.arange(num_frames, dtype=np.float32)

    # Lost-contact run first, then the class evidence on frames that still show tissue.
    empty = np.zeros(num_frames, dtype=bool)
    if num_frames >= 4 and rng.random() < empty_run_prob:
        length = int(rng.integers(1, num_frames // 4 + 1))
        start = int(rng.integers(0, num_frames - length + 1))
        empty[start : start + length] = True
    evidence = _runs(num_frames, float(rng.uniform(0.2, 0.5)), rng) & ~empty
    if not evidence.any():
        evidence[rng.choice(np.flatnonzero(~empty))] = True
    strength = (evidence * rng.uniform(0.6, 1.0)).astype(np.float32)  # (T,)

    # Lung sliding: a small periodic lateral shift of everything at and below the pleura.
    shift = (rng.uniform(0.01, 0.03) * np.sin(2 * np.pi * t / rng.uniform(12, 30) + rng.uniform(0, 2 * np.pi))).astype(
        np.float32
    )
    pleura = np.float32(rng.uniform(0.22, 0.32))
    width = np.float32(rng.uniform(0.008, 0.014))
    below = (depth > pleura).astype(np.float32)

    # Chest wall: soft horizontal bands over a mid-grey tissue level; dark air below the pleura.
    band_depths = rng.uniform(0.03, pleura - 0.03, size=3).astype(np.float32)
    wall = 0.28 + 0.18 * _gauss((depth[:, None] - band_depths) / 0.02).sum(axis=1)
    image = np.empty((num_frames, size, size), dtype=np.float32)
    image[:] = (wall * (depth < pleura) + 0.06 * below)[:, None]

    texture = _lateral_texture(angle, shift, rng, freq=(8.0, 40.0))  # (T, A)
    _add_band(image, 0.95 * _gauss((depth - pleura) / width), 0.55 + 0.45 * texture)

    # Short Z-line artefacts in every class, on random frames: distractors, not evidence.
    z_angles = rng.uniform(-_HALF_ANGLE * 0.8, _HALF_ANGLE * 0.8, size=2).astype(np.float32)
    z_on = (rng.random((num_frames, 2)) < 0.3).astype(np.float32)
    z_lines = (z_on[:, None, :] * _gauss((angle[None, :, None] - z_angles - shift[:, None, None]) / 0.012)).sum(-1)
    _add_band(image, 0.35 * _gauss((depth - pleura - 0.05) / 0.05) * below, z_lines)

    if name == "a_lines":
        arcs = 0.55 * _gauss((depth - 2 * pleura) / width) + 0.3 * _gauss((depth - 3 * pleura) / width)
        _add_band(image, arcs, strength[:, None] * (0.6 + 0.4 * texture))
    elif name == "b_lines":
        count = int(rng.integers(1, 4))
        angles = rng.uniform(-_HALF_ANGLE * 0.8, _HALF_ANGLE * 0.8, size=count).astype(np.float32)
        widths = rng.uniform(0.015, 0.035, size=count).astype(np.float32)
        rays = _gauss((angle[None, :, None] - angles - shift[:, None, None]) / widths).sum(-1)  # (T, A)
        _add_band(image, 0.8 * below, strength[:, None] * rays)
    else:
        centre = rng.uniform(-0.3, 0.3)
        half = rng.uniform(0.15, 0.3)
        lower = pleura + 0.12 + 0.1 * _lateral_texture(angle, np.zeros(1, np.float32), rng, freq=(4.0, 12.0))[0]
        inside = (np.abs(angle - centre) < half) * below[:, None]  # (D, A)
        region = inside * (depth[:, None] < lower)
        border = inside * _gauss((depth[:, None] - lower) / 0.012)
        dots_depth = pleura + rng.uniform(0.02, 0.1, size=4).astype(np.float32)
        dots_angle = centre + rng.uniform(-half, half, size=4).astype(np.float32)
        dots = (
            _gauss((depth[:, None, None] - dots_depth) / 0.01) * _gauss((angle[None, :, None] - dots_angle) / 0.015)
        ).sum(-1)
        image += strength[:, None, None] * (0.45 * region + 0.5 * border + 0.7 * dots)

    # Multiplicative speckle (Rayleigh: a static tissue grain plus a fresh share per frame),
    # depth attenuation, the lost-contact frames, then scan conversion to the fan.
    grain = _rayleigh_levels()[rng.integers(0, 256, size=(num_frames + 1, size, size), dtype=np.uint8)]
    image *= 0.6 * grain[:1] + 0.4 * grain[1:]
    image *= ((1.0 - 0.35 * depth) * 255.0)[:, None]
    image[empty] = 0
    polar = np.zeros((num_frames, size * size + 1), dtype=np.uint8)  # last column: outside the fan
    np.clip(image, 0, 255, out=image)
    polar[:, :-1] = image.reshape(num_frames, -1)
    frames = np.take(polar, geo.source, axis=1)
    return SyntheticClip(frames=frames, evidence=evidence, empty=empty, label=name)


def make_clip(
    label: int | str,
    num_frames: int,
    *,
    size: int = 128,
    rng: np.random.Generator,
    empty_run_prob: float = 0.25,
) -> np.ndarray:
    """Generate one clip: (T, size, size) uint8 frames. See ``render_clip`` for the arguments."""
    return render_clip(label, num_frames, size=size, rng=rng, empty_run_prob=empty_run_prob).frames


class SyntheticSource(PacedSource):
    """An endless (or ``frames``-long) stream of synthetic clips, paced at ``fps``.

    Clips of ``clip_frames`` frames follow each other; with ``label=None`` their classes cycle
    through ``CLASSES`` (one clip per class segment), otherwise every clip has ``label``.

    Args:
        name: stream id.
        fps: frame rate the stream is paced at.
        pacing: release frames at ``fps`` (False: as fast as the consumer takes them).
        speed: pacing speed factor (2.0 = twice the frame rate).
        size: frame side in pixels (int), or (width, height) to resize the square frames to;
            None: 224.
        gray: (H, W) frames when True, the same gray replicated to (H, W, 3) RGB when False.
        label: class of every clip, or None to cycle.
        seed: random seed; the same seed gives the same frames.
        frames: total frames to produce, or None for an endless stream.
        clip_frames: frames per clip.
    """

    def __init__(
        self,
        *,
        name: str = "synthetic",
        fps: float = 30.0,
        pacing: bool = True,
        speed: float = 1.0,
        size: int | tuple[int, int] | None = None,
        gray: bool = True,
        label: int | str | None = None,
        seed: int = 0,
        frames: int | None = None,
        clip_frames: int = 64,
    ) -> None:
        where = " (synthetic: source)"
        check("fps", fps, context=where, error=SourceError)
        check("frames", frames, context=f"{where}; omit frames for an endless stream", error=SourceError)
        check("clip_frames", clip_frames, context=where, error=SourceError)
        super().__init__(name=name, queue_size=2 * clip_frames, pacing=pacing, speed=speed)
        self._label = None if label is None else class_index(label)
        self._fps = float(fps)
        out_size = normalise_size(size)
        self._side = check("clip_size", 224 if out_size is None else max(out_size), context=where, error=SourceError)
        self._output = OutputFormat(gray=gray, size=out_size)
        self._seed = seed
        self._total = frames
        self._clip_frames = clip_frames

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        name: str | None = None,
        speed: float = 1.0,
        pacing: bool = True,
        loop: bool = False,
        gray: bool = True,
        size: int | tuple[int, int] | None = None,
        **options: Any,
    ) -> SyntheticSource:
        """``synthetic:`` with options ``fps``, ``label``, ``seed``, ``frames``, ``size``,
        ``clip_frames`` in the query (``synthetic:?fps=30&label=b_lines``) or as keywords.
        The spec's own ``size`` wins over the caller's (the size the clips are generated at)."""
        if loop:
            raise SourceError(f"loop applies to video sources; {spec!r} is endless unless frames=N is given")
        table: dict[str, Converter] = {
            "fps": float,
            "label": lambda v: int(v) if isinstance(v, int) or str(v).isdigit() else str(v),
            "seed": int,
            "frames": optional_int,
            "size": int,
            "clip_frames": int,
        }
        options = typed(spec, merge_query(spec, spec.partition(":")[2].lstrip("?"), options), table)
        size = options.pop("size", size)
        return cls(name=name or "synthetic", pacing=pacing, speed=speed, gray=gray, size=size, **options)

    def label_of(self, seq: int) -> str:
        """The true class of frame ``seq`` (for demos and evaluation)."""
        segment = seq // self._clip_frames
        return CLASSES[self._label if self._label is not None else segment % len(CLASSES)]

    def _produce(self, stop: threading.Event) -> Generator[tuple[int, float, np.ndarray], None, None]:
        rng = np.random.default_rng(self._seed)
        seq = 0
        while not stop.is_set() and (self._total is None or seq < self._total):
            clip = make_clip(self.label_of(seq), self._clip_frames, size=self._side, rng=rng)
            for image in clip:
                if self._total is not None and seq >= self._total:
                    return
                yield seq, seq / self._fps, self._output.apply(image)
                seq += 1


def encode_video(
    target: Any,
    images: Iterable[np.ndarray],
    *,
    fps: float,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    format: str | None = None,
    options: dict[str, str] | None = None,
) -> Any:
    """Encode uint8 frames, gray (H, W) or RGB (H, W, 3), into ``target`` (a path or a writable
    binary file) with PyAV: the one video writer of the project's tests and benchmarks (the
    synthetic clips of :func:`make_clip`, or any frames). Returns ``target``."""
    import av  # PyAV only when a video is written

    with av.open(str(target) if not hasattr(target, "write") else target, "w", format=format) as container:
        stream: av.VideoStream | None = None
        for image in images:
            if stream is None:
                # an exact rate for whole numbers, the nearest fraction (e.g. 30000/1001) otherwise
                added = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                assert isinstance(added, av.VideoStream)
                stream = added
                stream.height, stream.width = image.shape[:2]
                stream.pix_fmt = pix_fmt
                if options:
                    stream.options = dict(options)
            rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        if stream is not None:
            container.mux(stream.encode())
    return target
