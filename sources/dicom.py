"""DICOM cine loops (multi-frame ultrasound and any multi-frame image with a Cine Module),
replayed as a stream through pydicom, paced like a video file.

- Frame rate, first tag present wins: Frame Time (0018,1063, ms per frame), Cine Rate
  (0018,0040, frames/s), Recommended Display Frame Rate (0008,2144, frames/s); none of them:
  30 frames/s (logged).
- Photometric interpretations MONOCHROME2, MONOCHROME1 (inverted), RGB, YBR_FULL and
  YBR_FULL_422; 8 bits per sample. Gray output of YBR data is its Y plane (BT.601 luma, the
  weights of ``cv2.COLOR_RGB2GRAY``), so no colour conversion runs.
- Transfer syntaxes: whatever pydicom can decode with the handlers installed. With the declared
  dependencies (pydicom, numpy, Pillow, pylibjpeg-rle): the native ones (implicit/explicit VR
  little endian, explicit big endian, deflated), RLE Lossless (pylibjpeg-rle; pydicom's own
  decoder, 5-17x slower, when it is missing), JPEG Baseline and JPEG Extended 8-bit, JPEG 2000 and
  JPEG 2000 Lossless (Pillow). The video syntaxes (MPEG-2, MPEG-4 AVC/H.264, HEVC), which no
  pydicom handler decodes, go through PyAV like ``video:`` (photometric YBR_PARTIAL_420, as
  the standard asks, is accepted for them). Anything else (JPEG Lossless, JPEG-LS, HTJ2K, ...)
  is refused on open with the packages that would decode it.
- A folder replays its cine files one after another (recursively), ordered by Series Number,
  then Instance Number, then path. Files in it that are not cine loops (not DICOM, no pixel
  data, single-frame) are skipped, logged and counted in ``counters["skipped_files"]``; a cine
  loop it cannot decode is an error, as for a single file.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pydicom
from pydicom import uid
from pydicom.encaps import generate_fragments, parse_basic_offsets
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder, iter_pixels, pixel_array

from core.errors import SourceError

from .base import PacedSource, derive_name
from .image import OutputFormat, normalise_size
from .options import typed
from .video import FALLBACK_RATE, FrameConverter

log = logging.getLogger(__name__)

PHOTOMETRIC = ("MONOCHROME2", "MONOCHROME1", "RGB", "YBR_FULL", "YBR_FULL_422")
# (keyword, frames per second from its value), in the order they are looked up.
RATE_TAGS = (
    ("FrameTime", lambda ms: 1000.0 / float(ms)),
    ("CineRate", float),
    ("RecommendedDisplayFrameRate", float),
)
# DICOM's video transfer syntaxes hold one elementary stream, which no pydicom handler decodes;
# FFmpeg (PyAV) does, given its format.
_VIDEO_FORMATS = {
    **dict.fromkeys((uid.MPEG2MPML, uid.MPEG2MPMLF, uid.MPEG2MPHL, uid.MPEG2MPHLF), "mpegvideo"),
    **dict.fromkeys(
        (
            uid.MPEG4HP41,
            uid.MPEG4HP41F,
            uid.MPEG4HP41BD,
            uid.MPEG4HP41BDF,
            uid.MPEG4HP422D,
            uid.MPEG4HP422DF,
            uid.MPEG4HP423D,
            uid.MPEG4HP423DF,
            uid.MPEG4HP42STEREO,
            uid.MPEG4HP42STEREOF,
        ),
        "h264",
    ),
    **dict.fromkeys((uid.HEVCMP51, uid.HEVCM10P51), "hevc"),
}
_VIDEO_PHOTOMETRIC = ("YBR_PARTIAL_420", *PHOTOMETRIC)  # what the standard asks of MPEG data, and more
_CB_CR_SWAP = [0, 2, 1]  # DICOM YBR is Y, Cb, Cr; OpenCV's YCrCb is Y, Cr, Cb
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class NotCine(SourceError):
    """A file that is not a cine loop at all (not DICOM, no pixel data, one frame); a folder
    skips such files, a file given on its own is refused."""


@dataclass(frozen=True)
class CineFile:
    """What the header of one playable cine file says.

    Attributes:
        path: the file.
        frames: Number of Frames.
        rate: frames per second.
        rate_tag: the keyword the rate came from, or ``"default"``.
        photometric: Photometric Interpretation.
        syntax: the transfer syntax name.
        compressed: whether the pixel data is encapsulated (compressed).
        series, instance: Series Number and Instance Number (None when absent).
        video_format: FFmpeg's format name for a video transfer syntax (MPEG-2, H.264, HEVC),
            decoded with PyAV; None for pydicom's syntaxes.
    """

    path: Path
    frames: int
    rate: float
    rate_tag: str
    photometric: str
    syntax: str
    compressed: bool
    series: int | None
    instance: int | None
    video_format: str | None = None

    @property
    def order(self) -> tuple:
        """Sort key of a folder: series, instance (absent numbers last), then path."""
        return (self.series is None, self.series or 0, self.instance is None, self.instance or 0, str(self.path))


def frame_rate(ds: pydicom.Dataset) -> tuple[float, str]:
    """(frames per second, the tag it came from) by ``RATE_TAGS`` order; (30, "default") if none."""
    for keyword, to_rate in RATE_TAGS:
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        try:
            rate = to_rate(value)
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        if np.isfinite(rate) and rate > 0:
            return rate, keyword
    return FALLBACK_RATE, "default"


def _number(ds: pydicom.Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def inspect(path: Path) -> CineFile:
    """Read one file's header and check that it can be replayed.

    Raises:
        NotCine: not DICOM, no pixel data, or a single frame.
        SourceError: an unsupported photometric interpretation, bit depth or transfer syntax.
    """
    try:
        ds = pydicom.dcmread(path, defer_size="1 KB")
    except InvalidDicomError:
        raise NotCine(
            f"{path} is not a DICOM file (no DICM preamble); give a DICOM Part 10 file or a folder of them"
        ) from None
    except (OSError, EOFError, ValueError) as exc:
        raise SourceError(f"cannot read DICOM file {path}: {exc}; the file is corrupt or truncated") from None
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        kind = getattr(ds.get("SOPClassUID"), "name", None) or "unknown SOP class"
        raise NotCine(
            f"{path} holds no pixel data ({kind}); give a multi-frame image such as US Multi-frame Image Storage"
        )
    frames = _number(ds, "NumberOfFrames") or 1
    if frames < 2:
        raise NotCine(
            f"{path} is a single-frame image; dicom: replays cine loops, give a multi-frame file "
            "(Number of Frames > 1) or a folder of them"
        )
    syntax = getattr(ds, "file_meta", pydicom.Dataset()).get("TransferSyntaxUID")
    video_format = _VIDEO_FORMATS.get(syntax)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in (_VIDEO_PHOTOMETRIC if video_format else PHOTOMETRIC):
        raise SourceError(
            f"{path} uses photometric interpretation {photometric or 'none'!r}; supported: {', '.join(PHOTOMETRIC)}; "
            "re-export the loop in one of them"
        )
    if ds.get("BitsAllocated") != 8 or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise SourceError(
            f"{path} stores {ds.get('BitsAllocated', '?')}-bit samples; dicom: replays 8-bit cine loops, re-export as 8 bit"
        )
    if syntax is None:
        raise SourceError(
            f"{path} has no transfer syntax in its file meta information; the file is not valid DICOM Part 10"
        )
    rate, tag = frame_rate(ds)
    numbers = dict(series=_number(ds, "SeriesNumber"), instance=_number(ds, "InstanceNumber"))
    if video_format:
        return CineFile(
            path=path,
            frames=frames,
            rate=rate,
            rate_tag=tag,
            photometric=photometric,
            syntax=syntax.name,
            compressed=True,
            video_format=video_format,
            **numbers,
        )
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise SourceError(
            f"{path} uses transfer syntax {syntax.name} ({syntax}), which pydicom cannot decode; "
            "transcode it, e.g. `gdcmconv --raw` or dcmtk `dcmdjpeg`/`dcmdrle`"
        ) from None
    if not decoder.is_available:
        needs = "; or ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise SourceError(
            f"{path} uses transfer syntax {syntax.name}, which no installed handler decodes; install {needs}, "
            "or transcode the file (e.g. `gdcmconv --raw`)"
        )
    return CineFile(
        path=path,
        frames=frames,
        rate=rate,
        rate_tag=tag,
        photometric=photometric,
        syntax=syntax.name,
        compressed=syntax.is_compressed,
        **numbers,
    )


def scan(path: Path) -> tuple[list[CineFile], list[tuple[Path, str]]]:
    """The cine files to replay for a file or folder, in order, and the folder's skipped files
    with the reason.

    Raises:
        SourceError: a missing path, a single file that is not a playable cine loop, a folder
            without one, or a cine loop that cannot be decoded.
    """
    if path.is_file():
        return [inspect(path)], []
    if not path.is_dir():
        raise SourceError(f"DICOM path {path} does not exist; give a multi-frame DICOM file or a folder of them")
    cines, skipped = [], []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        try:
            cines.append(inspect(file))
        except NotCine as exc:
            skipped.append((file, str(exc)))
    if not cines:
        raise SourceError(
            f"folder {path} holds no multi-frame DICOM image ({len(skipped)} files skipped as not DICOM, "
            "without pixel data or single-frame); give a folder of cine loops"
        )
    for _file, reason in skipped:
        log.warning("skipping %s", reason)
    return sorted(cines, key=lambda c: c.order), skipped


class DicomSource(PacedSource):
    """Replays a DICOM cine loop (or a folder of them) as if it were live.

    Frame i of a file is released at ``t0 + (offset + i / rate) / speed``; the files of a folder
    follow each other one frame interval apart, each at its own rate. Frames are decoded one by
    one in the reader thread (``pydicom.pixels.iter_pixels``), straight to the output format.

    Args:
        path: a multi-frame DICOM file, or a folder of them.
        name: stream id; default: the file or folder name without its suffix.
        speed: playback speed factor.
        pacing: False releases frames as fast as they decode.
        loop: replay forever (a folder restarts at its first file); ``seq`` keeps increasing.
        gray: (H, W) frames when True, (H, W, 3) RGB when False.
        size: output size, int (square) or (width, height); None keeps the source size.

    Attributes:
        files: the cine files replayed, in order (known once open).
        rate: the first file's frame rate; ``files[i].rate_tag`` says which tag gave it.
        counters: ``skipped_files``, the folder's files that are not cine loops.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        speed: float = 1.0,
        pacing: bool = True,
        loop: bool = False,
        gray: bool = True,
        size: int | tuple[int, int] | None = None,
    ) -> None:
        self.path = Path(path).expanduser()
        super().__init__(name=name or derive_name(self.path.stem or self.path.name), pacing=pacing, speed=speed)
        self._loop_forever = loop
        self._output = OutputFormat(gray=gray, size=normalise_size(size))
        self.files: list[CineFile] = []
        self.rate = FALLBACK_RATE
        self.counters["skipped_files"] = 0
        self._pending: tuple[np.ndarray, Iterator[np.ndarray]] | None = None

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
    ) -> DicomSource:
        """``dicom:PATH`` (no options; speed, pacing and loop are keyword arguments)."""
        scheme, _, path = spec.partition(":")
        if scheme != "dicom" or not path:
            raise SourceError(f"source spec {spec!r} needs a path: dicom:FILE or dicom:FOLDER")
        typed(spec, options, {})
        return cls(path, name=name, speed=speed, pacing=pacing, loop=loop, gray=gray, size=size)

    def _open(self) -> None:
        self.files, skipped = scan(self.path)
        self.counters["skipped_files"] = len(skipped)
        self.rate = self.files[0].rate
        for cine in self.files:
            if cine.rate_tag == "default":
                log.warning(
                    "%s states no frame rate (Frame Time, Cine Rate, Recommended Display Frame Rate); "
                    "replaying at %g frames/s",
                    cine.path,
                    FALLBACK_RATE,
                )
        # Decode the first frame now, so a file with broken pixel data fails at 'async with'.
        frames = self._decode(self.files[0])
        self._pending = (next(frames), frames)

    def _decode(self, cine: CineFile) -> Iterator[np.ndarray]:
        """The file's frames, converted; SourceError (after the good ones) on broken pixel data."""
        frames = self._decode_video(cine) if cine.video_format else self._decode_pixels(cine)
        index = 0
        try:
            for image in frames:
                yield image
                index += 1
        except (SourceError, GeneratorExit):
            raise
        except Exception as exc:  # pydicom, its plugins and FFmpeg raise many types for bad data
            raise SourceError(
                f"DICOM file {cine.path}: frame {index} of {cine.frames} cannot be decoded "
                f"({type(exc).__name__}: {exc}); the file is corrupt or truncated"
            ) from None
        if index < cine.frames:
            raise SourceError(
                f"DICOM file {cine.path} ends after {index} of its {cine.frames} frames; the file is truncated"
            )

    def _decode_pixels(self, cine: CineFile) -> Iterator[np.ndarray]:
        """Frames pydicom decodes, one at a time. They stay as stored (``raw``): the Y plane of
        YBR is the gray image, and for RGB OpenCV converts YBR (the same full-range BT.601 matrix
        as pydicom's, several times faster than its numpy code)."""
        if cine.photometric == "YBR_FULL_422" and not cine.compressed:
            # pydicom 3.0.2's iter_pixels sizes frames 1.. of native YBR_FULL_422 as YBR_FULL (it
            # changes its own photometric setting after frame 0): decode frame by frame instead.
            arrays = (pixel_array(cine.path, index=i, raw=True) for i in range(cine.frames))
        else:
            arrays = iter_pixels(cine.path, raw=True)
        ybr = cine.photometric.startswith("YBR")
        for array in arrays:
            if ybr and self._output.gray:
                array = array[:, :, 0]
            elif ybr:
                array = cv2.cvtColor(np.ascontiguousarray(array[:, :, _CB_CR_SWAP]), cv2.COLOR_YCrCb2RGB)
            elif cine.photometric == "MONOCHROME1":
                array = np.invert(array)
            yield self._output.apply(np.ascontiguousarray(array, dtype=np.uint8))

    def _decode_video(self, cine: CineFile) -> Iterator[np.ndarray]:
        """An MPEG-2 / H.264 / HEVC cine loop's frames through PyAV, converted as ``video:`` does
        (gray straight from the luma plane, limited range expanded)."""
        pixels = io.BytesIO(pydicom.dcmread(cine.path).PixelData)
        parse_basic_offsets(pixels)
        stream = io.BytesIO(b"".join(generate_fragments(pixels)))
        convert = FrameConverter(self._output)
        with av.open(stream, format=cine.video_format) as container:
            container.streams.video[0].codec_context.options = {"err_detect": "explode"}
            for frame in container.decode(video=0):
                yield convert(frame)

    def _produce(self, stop: threading.Event) -> Iterator[tuple[int, float, np.ndarray]]:
        seq, offset = 0, 0.0
        for lap in itertools.count():
            for number, cine in enumerate(self.files):
                if lap == 0 and number == 0 and self._pending is not None:
                    first, rest = self._pending
                    self._pending = None
                    frames = itertools.chain([first], rest)
                else:
                    rest = frames = self._decode(cine)
                with contextlib.closing(rest):
                    for i, image in enumerate(frames):
                        if stop.is_set():
                            return
                        yield seq, offset + i / cine.rate, image
                        seq += 1
                offset += cine.frames / cine.rate
            if not self._loop_forever:
                return

    def _close(self) -> None:
        if self._pending is not None:
            self._pending[1].close()
            self._pending = None
