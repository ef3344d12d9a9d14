"""The one guard every frame passes, from every source, before it is converted or resized.

:func:`check_frame` checks what a sender, a file or a device hands over: an array of a known
dtype (uint8, uint16, float32), rank 2 or 3 with 1 or 3 channels, no empty side, at most the
source's byte limit, finite values. :class:`sources.image.OutputFormat` runs it first, so no
source can skip it. A failure raises :class:`BadMessage`; the source counts it (with
:class:`BadCounter`, which also logs it, rate-limited) and goes on with the next frame: one bad
frame never ends a stream.

A compressed payload is checked before it is decoded (its declared size against the same limit,
see ``wire.jpeg_shape`` and ``dicom.inspect``), so a small file declaring huge frames is refused
before any memory is allocated.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import numpy as np
import simplejpeg

from core.errors import SourceError

DEFAULT_MAX_FRAME_BYTES = 64 * 2**20  # one frame, decoded: 4096 x 4096 RGB is 48 MiB
SUPPORTED_DTYPES = ("uint8", "uint16", "float32")
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (not DHT, JPG, DAC)
_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}  # RSTn, TEM, SOI: no length field
_LOG_FIRST = 10  # bad frames logged one by one; after that one line per _LOG_EVERY
_LOG_EVERY = 100


class BadMessage(SourceError):
    """A frame or message that cannot be used (malformed, out of bounds, corrupt); the text says
    what is wrong. Sources count it and skip it."""


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: sender-controlled text in logs stays short."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}...({len(text)} chars)"


def check_frame(image: Any, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> np.ndarray:
    """``image`` when it is a usable frame; BadMessage naming the fault otherwise.

    Usable: a numpy array of uint8, uint16 or float32, shape (H, W) or (H, W, C) with C 1 or 3
    and H, W >= 1, of at most ``max_bytes`` bytes, with finite values (float32).
    """
    if not isinstance(image, np.ndarray):
        raise BadMessage(f"frame is a {type(image).__name__}, not an image array")
    if image.dtype.name not in SUPPORTED_DTYPES:
        raise BadMessage(f"frame of {image.dtype} pixels; send {', '.join(SUPPORTED_DTYPES)}")
    shape = image.shape
    if image.ndim not in (2, 3) or (image.ndim == 3 and shape[2] not in (1, 3)):
        raise BadMessage(f"frame of shape {short(shape)}; send (H, W) gray or (H, W, 3) colour")
    if shape[0] < 1 or shape[1] < 1:
        raise BadMessage(f"frame of {shape[1]}x{shape[0]} pixels is empty")
    if image.nbytes > max_bytes:
        raise BadMessage(f"frame {shape[1]}x{shape[0]} of {image.nbytes} bytes is over the limit of {max_bytes} bytes")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise BadMessage("frame holds NaN or infinite values")
    return image


def to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 as is; uint16 keeps its high byte; float32 is taken as [0, 1] and scaled to 0-255."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


def jpeg_shape(data: bytes | memoryview) -> tuple[int, int, int]:
    """(height, width, components) from a JPEG's frame header, without decoding anything."""
    if data[:2] != b"\xff\xd8":
        raise BadMessage("payload is not a JPEG (no start-of-image marker)")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise BadMessage(f"corrupt JPEG: marker expected at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF or marker in _STANDALONE_MARKERS:
            i += 1 if marker == 0xFF else 2
            continue
        if marker in _SOF_MARKERS and i + 10 <= len(data):
            height, width = int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
            return height, width, data[i + 9]
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    raise BadMessage("corrupt JPEG: no frame header (SOF) before the image data")


def decode_jpeg(
    data: bytes | memoryview, *, max_bytes: int, gray: bool = False, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """A JPEG's pixels, checked before and during decoding: (H, W) gray (the luma plane of a
    colour JPEG when ``gray``) or (H, W, 3) RGB.

    The frame header is read first: its size must fit ``max_bytes`` (and equal ``shape`` = (H, W)
    when given, e.g. a DICOM file's Rows and Columns) before anything is decoded, so no
    decompression bomb. libjpeg-turbo (simplejpeg) then decodes in strict mode: every warning
    it raises on corrupt data ("Corrupt JPEG data: ...", a bad Huffman code, data after the
    end) makes the frame bad, as the video path's ``err_detect=explode`` does, instead of
    garbage pixels passing silently.

    Raises:
        BadMessage: not a JPEG, over the limit, another size than ``shape``, or corrupt.
    """
    height, width, components = jpeg_shape(data)
    if components not in (1, 3) or height == 0 or width == 0:
        raise BadMessage(f"JPEG of {width}x{height} with {components} components; send gray or colour JPEG")
    if height * width * components > max_bytes:
        raise BadMessage(f"JPEG of {width}x{height}x{components} decodes over the limit of {max_bytes} bytes")
    if shape is not None and (height, width) != tuple(shape):
        raise BadMessage(f"JPEG of {width}x{height} where {shape[1]}x{shape[0]} is declared")
    try:
        image = simplejpeg.decode_jpeg(data, colorspace="GRAY" if gray or components == 1 else "RGB", strict=True)
    except (ValueError, RuntimeError) as exc:  # simplejpeg raises ValueError for libjpeg's errors and warnings
        raise BadMessage(f"corrupt JPEG ({str(exc)[:80]})") from None
    return image[:, :, 0] if image.shape[2] == 1 else image


def check_limit(key: str, value: Any) -> int:
    """A byte limit option (``max_frame_bytes``, ...): an int >= 1, else a one-line SourceError."""
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1):
        raise SourceError(f"{key} must be a positive integer number of bytes, got {short(value)}")
    return int(value)


class BadCounter:
    """Counts a source's bad messages in ``counters["bad_messages"]`` and logs them: the first 10
    one by one, then every 100th (sender text cut short, the line to 200 characters).

    Args:
        name: the stream id, for the log.
        counters: the source's counters (the key is created at 0).
        log: the source module's logger.
        what: how a bad message is called in the log, e.g. "OpenIGTLink message".
    """

    def __init__(self, name: str, counters: MutableMapping[str, int], log: logging.Logger, what: str) -> None:
        self._name, self._counters, self._log, self._what = name, counters, log, what
        counters.setdefault("bad_messages", 0)

    def __call__(self, reason: str | BaseException) -> None:
        """Count one bad message; ``reason`` is its text (a BadMessage's own, or any exception's)."""
        if isinstance(reason, BadMessage):
            text = str(reason)
        elif isinstance(reason, BaseException):
            text = f"{type(reason).__name__}: {reason}"
        else:
            text = reason
        count = self._counters["bad_messages"] = self._counters["bad_messages"] + 1
        if count <= _LOG_FIRST or count % _LOG_EVERY == 0:
            self._log.warning("%s: bad %s skipped (%s); %d so far", self._name, self._what, text[:200], count)
