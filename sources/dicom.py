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
- Before anything is decoded, a file's declared frame size (Rows x Columns x samples) must fit
  ``max_frame_bytes`` (a decompression bomb is refused on open), and every compressed JPEG or
  JPEG 2000 frame must declare that same size. JPEG frames are decoded by libjpeg-turbo in strict
  mode (``guard.decode_jpeg``): corrupt data is detected, not classified as garbage. A frame that
  cannot be used is a counted bad message (``counters["bad_messages"]``, logged) and skipped.
- A folder is an exam: its cine files (instances) play one after another (recursively), ordered
  by Series Number, then Instance Number, then path. Each file is its own segment of the stream
  (``Frame.segment``: the file and its SOP Instance UID), so no window spans two files and every
  prediction names its file. Files that are not cine loops (not DICOM, no pixel data,
  single-frame) are skipped, logged and counted in ``counters["skipped_files"]``; corrupt files
  (truncated, Number of Frames 0, undecodable data) are reported as corrupt, counted in
  ``counters["corrupt_files"]``, and the exam goes on with the next file; a cine loop of a kind
  the source cannot decode (transfer syntax, photometric interpretation) is an error, as for a
  single file. When the last file has played the stream ends, and says so.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom import uid
from pydicom.encaps import generate_fragments, generate_frames, parse_basic_offsets
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder, iter_pixels, pixel_array

from core.bounds import bound, within
from core.errors import SourceError

from .base import PacedSource, derive_name
from .frame import Segment
from .guard import DEFAULT_MAX_FRAME_BYTES, BadCounter, BadMessage, check_limit, decode_jpeg
from .image import OutputFormat, normalise_size
from .options import merge_query, typed
from .video import FALLBACK_RATE, FrameConverter

log = logging.getLogger(__name__)

Frames = Generator[np.ndarray | None, None, None]  # a file's frames, None for a refused one


class _NoTraceback(logging.Filter):
    """pydicom logs every plugin failure with its traceback (``LOGGER.exception``) before it
    raises; the source reports the failure itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None


logging.getLogger("pydicom.pixels.decoders.base").addFilter(_NoTraceback())

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
# Compressed syntaxes whose frames the source decodes itself, each frame checked first.
_JPEG = frozenset((uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit))
_J2K = frozenset((uid.JPEG2000, uid.JPEG2000Lossless))


class NotCine(SourceError):
    """A file that is not a cine loop at all (not DICOM, no pixel data, one frame); a folder
    skips such files, a file given on its own is refused."""


class CorruptFile(SourceError):
    """A cine file that is broken (truncated, impossible header values, undecodable data); a
    folder reports it and goes on with its next file, a file given on its own is an error."""


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
        rows, columns: the declared frame size.
        instance_uid: SOP Instance UID (None when absent).
        codec: "jpeg" or "j2k" for frames the source decodes itself, else None.
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
    rows: int = 0
    columns: int = 0
    instance_uid: str | None = None
    codec: str | None = None

    @property
    def order(self) -> tuple:
        """Sort key of a folder: series, instance (absent numbers last), then path."""
        return (self.series is None, self.series or 0, self.instance is None, self.instance or 0, str(self.path))


def frame_rate(ds: pydicom.Dataset, path: Path | None = None) -> tuple[float, str]:
    """(frames per second, the tag it came from) by ``RATE_TAGS`` order; (30, "default") if none.

    A rate outside ``core.bounds``' ``frame_rate`` (0.01 to 100,000 frames/s: a Frame Time of
    1e9 ms, or of 1e-9 ms) is not believed: it is logged and the next tag is tried."""
    for keyword, to_rate in RATE_TAGS:
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        try:
            rate = to_rate(value)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            continue
        if within("frame_rate", rate):
            return rate, keyword
        log.warning(
            "%s: %s %s gives %.3g frames/s, outside %s; ignored",
            path or "DICOM file",
            keyword,
            str(value)[:30],
            rate,
            bound("frame_rate").describe(),
        )
    return FALLBACK_RATE, "default"


def _number(ds: pydicom.Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _sop_class(ds: pydicom.Dataset) -> str:
    """The name of the file's SOP class (from the dataset, else the file meta information)."""
    meta = getattr(ds, "file_meta", pydicom.Dataset())
    for value in (ds.get("SOPClassUID"), meta.get("MediaStorageSOPClassUID")):
        if value:
            return uid.UID(str(value)).name
    return "unknown SOP class"


def inspect(path: Path, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> CineFile:
    """Read one file's header and check that it can be replayed.

    Raises:
        NotCine: not DICOM, no pixel data, or a single frame.
        CorruptFile: cut short, impossible values (Number of Frames 0, no rows), unreadable.
        SourceError: an unsupported photometric interpretation, bit depth or transfer syntax, or
            frames declared larger than ``max_frame_bytes``.
    """
    try:
        ds = pydicom.dcmread(path, defer_size="1 KB")
    except InvalidDicomError:
        raise NotCine(
            f"{path} is not a DICOM file (no DICM preamble); give a DICOM Part 10 file or a folder of them"
        ) from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a broken header
        raise CorruptFile(
            f"cannot read DICOM file {path} ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
            "the file is corrupt or truncated"
        ) from None
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        kind = _sop_class(ds)
        if "Image Storage" in kind:  # an image without its pixels: cut short
            raise CorruptFile(
                f"{path} is an image ({kind}) but ends before its pixel data ({path.stat().st_size} bytes); "
                "the file is truncated or corrupt"
            )
        raise NotCine(
            f"{path} holds no pixel data ({kind}); give a multi-frame image such as US Multi-frame Image Storage"
        )
    declared = _number(ds, "NumberOfFrames")
    if declared is not None and declared < 1:
        raise CorruptFile(
            f"{path} declares Number of Frames {declared}; the file is corrupt (a cine loop has 2 or more)"
        )
    frames = declared or 1
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
    rows, columns = _number(ds, "Rows") or 0, _number(ds, "Columns") or 0
    if rows < 1 or columns < 1:
        raise CorruptFile(f"{path} declares frames of {columns}x{rows} pixels; the file is corrupt")
    samples = 1 if photometric.startswith("MONOCHROME") else 3
    if rows * columns * samples > max_frame_bytes:
        raise SourceError(
            f"{path} declares frames of {columns}x{rows}x{samples} ({rows * columns * samples} bytes), over "
            f"max_frame_bytes={max_frame_bytes}; refused before decoding (raise ?max_frame_bytes= if the file is genuine)"
        )
    rate, tag = frame_rate(ds, path)
    codec = "jpeg" if syntax in _JPEG else "j2k" if syntax in _J2K else None
    compressed = True
    if not video_format and not codec:
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
        compressed = syntax.is_compressed
    uid_value = ds.get("SOPInstanceUID")
    return CineFile(
        path=path,
        frames=frames,
        rate=rate,
        rate_tag=tag,
        photometric=photometric,
        syntax=syntax.name,
        compressed=compressed,
        series=_number(ds, "SeriesNumber"),
        instance=_number(ds, "InstanceNumber"),
        video_format=video_format,
        rows=rows,
        columns=columns,
        instance_uid=str(uid_value) if uid_value else None,
        codec=codec,
    )


@dataclass(frozen=True)
class Scan:
    """What a file or folder holds: the cine files to play, in order, and the files left out,
    each with its one-line reason (``skipped``: not cine loops; ``corrupt``: broken)."""

    cines: list[CineFile]
    skipped: list[tuple[Path, str]]
    corrupt: list[tuple[Path, str]]


def scan(path: Path, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Scan:
    """The cine files to replay for a file or folder, in order, and the folder's files left out.

    Raises:
        SourceError: a missing path, a single file that is not a playable cine loop (or corrupt),
            a folder without one, or a cine loop that cannot be decoded.
    """
    if path.is_file():
        return Scan([inspect(path, max_frame_bytes=max_frame_bytes)], [], [])
    if not path.is_dir():
        raise SourceError(f"DICOM path {path} does not exist; give a multi-frame DICOM file or a folder of them")
    found = Scan([], [], [])
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        try:
            found.cines.append(inspect(file, max_frame_bytes=max_frame_bytes))
        except NotCine as exc:
            found.skipped.append((file, str(exc)))
        except CorruptFile as exc:
            found.corrupt.append((file, str(exc)))
    if not found.cines:
        raise SourceError(
            f"folder {path} holds no multi-frame DICOM image ({len(found.skipped)} files skipped as not DICOM, "
            f"without pixel data or single-frame; {len(found.corrupt)} corrupt); give a folder of cine loops"
        )
    for _file, reason in found.skipped:
        log.warning("skipping %s", reason)
    for _file, reason in found.corrupt:
        log.error("corrupt file left out: %s", reason)
    found.cines.sort(key=lambda c: c.order)
    return found


class DicomSource(PacedSource):
    """Replays a DICOM cine loop (or a folder of them, an exam) as if it were live.

    Frame i of a file is released at ``t0 + (offset + i / rate) / speed``; the files of a folder
    follow each other one frame interval apart, each at its own rate. Frames are decoded one by
    one in the reader thread, straight to the output format. Every frame carries its file as
    ``Frame.segment`` (the path relative to the folder, and the SOP Instance UID), so the
    pipeline closes a window at each file boundary and each prediction names its file.

    Args:
        path: a multi-frame DICOM file, or a folder of them.
        name: stream id; default: the file or folder name without its suffix.
        speed: playback speed factor.
        pacing: False releases frames as fast as they decode.
        loop: replay forever (a folder restarts at its first file); ``seq`` keeps increasing.
        gray: (H, W) frames when True, (H, W, 3) RGB when False.
        size: output size, int (square) or (width, height); None keeps the source size.
        max_frame_bytes: the largest decoded frame accepted (Rows x Columns x samples), checked
            on the header before anything is decoded.

    Attributes:
        files: the cine files replayed, in order (known once open).
        rate: the first file's frame rate; ``files[i].rate_tag`` says which tag gave it.
        counters: ``skipped_files`` (not cine loops), ``corrupt_files`` (broken files a folder
            left out or stopped early: truncated, undecodable), ``bad_messages`` (frames that could
            not be used: corrupt JPEG data, a frame of another size than declared; skipped), and
            ``files_played``.
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
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.path = Path(path).expanduser()
        super().__init__(name=name or derive_name(self.path.stem or self.path.name), pacing=pacing, speed=speed)
        self._loop_forever = loop
        self._max_frame_bytes = check_limit("max_frame_bytes", max_frame_bytes)
        self._output = OutputFormat(gray=gray, size=normalise_size(size), max_bytes=self._max_frame_bytes)
        self.files: list[CineFile] = []
        self.rate = FALLBACK_RATE
        self.counters.update(skipped_files=0, corrupt_files=0, files_played=0)
        self._count_bad = BadCounter(self.name, self.counters, log, "DICOM frame")
        self._folder = self.path.is_dir()
        self._pending: tuple[np.ndarray | None, Frames] | None = None

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
        """``dicom:PATH[?max_frame_bytes=N]`` (speed, pacing and loop are keyword arguments)."""
        scheme, _, rest = spec.partition(":")
        path, _, query = rest.partition("?")
        if scheme != "dicom" or not path:
            raise SourceError(f"source spec {spec!r} needs a path: dicom:FILE or dicom:FOLDER")
        given = typed(spec, merge_query(spec, query, options), {"max_frame_bytes": int})
        return cls(path, name=name, speed=speed, pacing=pacing, loop=loop, gray=gray, size=size, **given)

    def _open(self) -> None:
        found = scan(self.path, max_frame_bytes=self._max_frame_bytes)
        self.files = found.cines
        self.counters["skipped_files"] = len(found.skipped)
        self.counters["corrupt_files"] = len(found.corrupt)
        self.rate = self.files[0].rate
        for cine in self.files:
            if cine.rate_tag == "default":
                log.warning(
                    "%s states no frame rate (Frame Time, Cine Rate, Recommended Display Frame Rate); "
                    "replaying at %g frames/s",
                    cine.path,
                    FALLBACK_RATE,
                )
        if not self._folder:  # decode the first frame now: a broken file fails at 'async with'
            frames = self._decode(self.files[0])
            self._pending = (next(frames), frames)

    def segment(self, cine: CineFile) -> Segment:
        """The segment of ``cine``'s frames: its path (relative to the folder) and SOP Instance UID."""
        name = cine.path.relative_to(self.path).as_posix() if self._folder else cine.path.name
        return Segment(name, cine.instance_uid)

    def _decode(self, cine: CineFile) -> Frames:
        """The file's frames, converted (None for a frame that could not be used: counted and
        logged); CorruptFile (after the good ones) when the file's data breaks off."""
        if cine.video_format:
            frames = self._decode_video(cine)
        elif cine.codec:
            frames = self._decode_each(cine)
        else:
            frames = self._decode_pixels(cine)
        index = 0
        try:
            for image in frames:
                yield image
                index += 1
        except (SourceError, GeneratorExit):
            raise
        except Exception as exc:  # pydicom, its plugins and FFmpeg raise many types for bad data
            reason = " ".join(str(exc).split())[:160]  # one line, whatever the decoder's text
            raise CorruptFile(
                f"DICOM file {cine.path}: frame {index} of {cine.frames} cannot be decoded "
                f"({type(exc).__name__}: {reason}); the file is corrupt or truncated"
            ) from None
        if index < cine.frames:
            raise CorruptFile(
                f"DICOM file {cine.path} ends after {index} of its {cine.frames} frames; the file is truncated"
            )

    def _decode_each(self, cine: CineFile) -> Frames:
        """JPEG and JPEG 2000 frames, each decoded on its own after its declared size was checked
        against the header's (and ``max_frame_bytes``); JPEG by libjpeg-turbo in strict mode, so
        corrupt data is a bad frame, not garbage pixels."""
        pixels = pydicom.dcmread(cine.path)["PixelData"].value
        gray = self._output.gray
        for data in generate_frames(pixels, number_of_frames=cine.frames):
            try:
                if cine.codec == "jpeg":
                    array = decode_jpeg(
                        data, max_bytes=self._max_frame_bytes, gray=gray, shape=(cine.rows, cine.columns)
                    )
                else:
                    array = self._decode_j2k(data, cine)
            except BadMessage as exc:
                self._count_bad(f"{cine.path.name}: {exc}")
                yield None
                continue
            if cine.photometric == "MONOCHROME1":
                array = np.invert(array)
            yield self._checked(array, cine, self._output.apply)

    def _decode_j2k(self, data: bytes, cine: CineFile) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(data), formats=("JPEG2000",)) as image:
                width, height = image.size
                if (height, width) != (cine.rows, cine.columns):
                    raise BadMessage(
                        f"JPEG 2000 frame of {width}x{height} where {cine.columns}x{cine.rows} is declared"
                    )
                image.load()
                return np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"))
        except BadMessage:
            raise
        except Exception as exc:  # noqa: BLE001 - Pillow/OpenJPEG raise OSError, ValueError, ...
            raise BadMessage(f"corrupt JPEG 2000 frame ({' '.join(str(exc).split())[:80]})") from None

    def _decode_pixels(self, cine: CineFile) -> Frames:
        """Frames pydicom decodes, one at a time. They stay as stored (``raw``): the Y plane of
        YBR is the gray image, and for RGB OpenCV converts YBR (the same full-range BT.601 matrix
        as pydicom's, several times faster than its numpy code)."""
        if cine.photometric == "YBR_FULL_422" and not cine.compressed:
            # pydicom 3.0.2's iter_pixels sizes frames 1.. of native YBR_FULL_422 as YBR_FULL (it
            # changes its own photometric setting after frame 0): decode frame by frame instead.
            arrays: Iterator[np.ndarray] = (pixel_array(cine.path, index=i, raw=True) for i in range(cine.frames))
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
            yield self._checked(np.ascontiguousarray(array), cine, self._output.apply)

    def _decode_video(self, cine: CineFile) -> Frames:
        """An MPEG-2 / H.264 / HEVC cine loop's frames through PyAV, converted as ``video:`` does
        (gray straight from the luma plane, limited range expanded)."""
        pixels = io.BytesIO(pydicom.dcmread(cine.path).PixelData)
        parse_basic_offsets(pixels)
        stream = io.BytesIO(b"".join(generate_fragments(pixels)))
        convert = FrameConverter(self._output)
        with av.open(stream, "r", format=cine.video_format) as container:
            container.streams.video[0].codec_context.options = {"err_detect": "explode"}
            for frame in container.decode(video=0):
                yield self._checked(frame, cine, convert)

    def _checked(self, frame: Any, cine: CineFile, convert: Callable[[Any], np.ndarray]) -> np.ndarray | None:
        """``convert(frame)``, or None when the frame guard refuses it (counted and logged)."""
        try:
            return convert(frame)
        except BadMessage as exc:
            self._count_bad(f"{cine.path.name}: {exc}")
            return None

    def _produce(self, stop: threading.Event) -> Generator[tuple[int, float, np.ndarray, Segment], None, None]:
        seq, offset = 0, 0.0
        for lap in itertools.count():
            for number, cine in enumerate(self.files):
                if lap == 0 and number == 0 and self._pending is not None:
                    first, rest = self._pending
                    self._pending = None
                    frames: Iterator[np.ndarray | None] = itertools.chain([first], rest)
                else:
                    rest = self._decode(cine)
                    frames = rest
                segment = self.segment(cine)
                log.info("%s: playing %s (%d frames at %.3g frames/s)", self.name, segment.name, cine.frames, cine.rate)
                with contextlib.closing(rest):
                    try:
                        for i, image in enumerate(frames):
                            if stop.is_set():
                                return
                            if image is not None:  # a bad frame leaves a jump in seq
                                yield seq + i, offset + i / cine.rate, image, segment
                    except CorruptFile as exc:
                        if not self._folder:
                            raise
                        self.counters["corrupt_files"] += 1
                        log.error("%s: %s; going on with the next file", self.name, exc)
                seq += cine.frames
                offset += cine.frames / cine.rate
                self.counters["files_played"] += 1
            if not self._loop_forever:
                log.info(
                    "%s: ended after %d file(s) (%d skipped as not cine loops, %d corrupt, %d bad frames)",
                    self.name,
                    len(self.files),
                    self.counters["skipped_files"],
                    self.counters["corrupt_files"],
                    self.counters["bad_messages"],
                )
                return

    def _close(self) -> None:
        if self._pending is not None:
            self._pending[1].close()
            self._pending = None
