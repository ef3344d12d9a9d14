"""The ZeroMQ frame wire format (compatible with imagezmq), and a small sender.

A message is a ZeroMQ multipart message of two frames:

1. a UTF-8 JSON object (the header), at most ``MAX_HEADER_BYTES``;
2. the payload: either the raw bytes of a C-ordered array, or a JPEG file.

Raw array (imagezmq ``send_array``)::

    {"msg": "probe-1", "dtype": "uint8", "shape": [480, 640]}         (or [H, W, 3] BGR, OpenCV's order)

JPEG (imagezmq ``send_jpg`` sends only ``{"msg": ...}``; this module adds ``"jpg": true``)::

    {"msg": "probe-1", "jpg": true}

A header without ``dtype`` and ``shape`` is read as JPEG, so imagezmq's own form works. Optional
fields: ``"seq"`` (non-negative int: the receiver turns jumps into visible gaps) and
``"timestamp"`` (capture time, seconds since the epoch). Other fields are ignored. Nothing is
ever unpickled; everything is checked before any array is allocated. With a topic (PUB/SUB),
a leading topic frame comes first (three frames).

The header is parsed with limits: at most ``MAX_HEADER_DEPTH`` levels of nesting, integers of at
most ``MAX_INT_DIGITS`` digits, finite numbers only (no NaN/Infinity, nothing that overflows a
float). Whatever goes wrong while decoding a message raises ``BadMessage``, never anything else.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import zmq

from core.errors import SourceError

from .guard import DEFAULT_MAX_FRAME_BYTES, BadMessage, decode_jpeg, short

MAX_HEADER_BYTES = 64 * 2**10
MAX_HEADER_DEPTH = 8  # {"shape": [...]} needs 2
MAX_INT_DIGITS = 20  # any 64-bit integer
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(text)} digits (more than {MAX_INT_DIGITS})")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:30]} does not fit a finite float")
    return value


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not a finite number")


_HEADER_DECODER = json.JSONDecoder(parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant)


def parse_header(raw: bytes | memoryview) -> Any:
    """The JSON value of a header, parsed with limits (nesting depth, number sizes, finite only).

    Raises:
        BadMessage: not UTF-8 JSON, nested deeper than ``MAX_HEADER_DEPTH``, or a number that is
            too long, not finite or overflows a float.
    """
    raw = bytes(raw)  # a memoryview of a ZeroMQ frame too
    brackets = raw.translate(None, _NOT_BRACKETS)
    if len(brackets) > MAX_HEADER_DEPTH:  # deeper nesting is possible: look outside strings only
        outside = b"".join(raw.split(b'"')[::2]) if b"\\" not in raw else _JSON_STRING.sub(b"", raw)
        brackets = outside.translate(None, _NOT_BRACKETS)
    if len(brackets) > MAX_HEADER_DEPTH:
        steps = np.where(np.frombuffer(brackets, np.uint8) & 0x04, -1, 1)  # ']' and '}' have bit 2 set
        if int(np.cumsum(steps).max()) > MAX_HEADER_DEPTH:
            raise BadMessage(f"header nests deeper than {MAX_HEADER_DEPTH} levels")
    try:
        return _HEADER_DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadMessage(f"header is not UTF-8 JSON within limits ({str(exc)[:80]})") from None


def encode_array(
    array: np.ndarray, *, msg: str = "", seq: int | None = None, timestamp: float | None = None
) -> list[bytes]:
    """[header, raw bytes] for an array (imagezmq ``send_array`` compatible)."""
    array = np.ascontiguousarray(array)
    header = {"msg": msg, "dtype": str(array.dtype), "shape": list(array.shape)}
    return [_header_bytes(header, seq, timestamp), array.tobytes()]


def encode_jpg(
    image: np.ndarray | bytes,
    *,
    msg: str = "",
    seq: int | None = None,
    timestamp: float | None = None,
    quality: int = 90,
) -> list[bytes]:
    """[header, JPEG bytes]: ``image`` is a uint8 (H, W) gray or (H, W, 3) RGB array to encode
    at ``quality``, or JPEG bytes sent as they are."""
    jpeg = bytes(image) if isinstance(image, (bytes, bytearray, memoryview)) else _jpeg_bytes(image, quality)
    return [_header_bytes({"msg": msg, "jpg": True}, seq, timestamp), jpeg]


def _header_bytes(header: dict[str, Any], seq: int | None, timestamp: float | None) -> bytes:
    if seq is not None:
        header["seq"] = int(seq)
    if timestamp is not None:
        header["timestamp"] = float(timestamp)
    return json.dumps(header, separators=(",", ":")).encode()


def _jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise SourceError(f"JPEG frames must be uint8 (H, W) or (H, W, 3) RGB, got {image.dtype} {image.shape}")
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - cv2 encodes any valid uint8 image
        raise SourceError("OpenCV could not encode the frame as JPEG")
    return buffer.tobytes()


def decode_message(
    parts: Sequence[bytes | memoryview],
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    allowed_dtypes: Sequence[str] = ("uint8",),
) -> tuple[dict[str, Any], np.ndarray]:
    """Validate and decode [header, payload].

    Returns:
        (header dict, array): the array is a read-only view of the payload for raw arrays
        (dtype and channel order as sent), or the decoded JPEG as uint8 (H, W) gray or
        (H, W, 3) RGB.

    Raises:
        BadMessage: naming what is wrong, before anything is allocated; any other failure while
            decoding is turned into a BadMessage too, so one message can never end a stream.
    """
    try:
        return _decode_message(parts, max_frame_bytes, allowed_dtypes)
    except BadMessage:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a sender can trigger is a bad message
        raise BadMessage(f"message could not be decoded ({type(exc).__name__}: {str(exc)[:80]})") from None


def _decode_message(
    parts: Sequence[bytes | memoryview], max_frame_bytes: int, allowed_dtypes: Sequence[str]
) -> tuple[dict[str, Any], np.ndarray]:
    if len(parts) != 2:
        raise BadMessage(f"expected 2 message parts (JSON header, payload), got {len(parts)}")
    raw_header, payload = parts
    if len(raw_header) > MAX_HEADER_BYTES:
        raise BadMessage(f"header of {len(raw_header)} bytes is over the {MAX_HEADER_BYTES}-byte limit")
    if len(payload) > max_frame_bytes:
        raise BadMessage(f"payload of {len(payload)} bytes is over max_frame_bytes={max_frame_bytes}")
    header = parse_header(raw_header)
    if not isinstance(header, dict):
        raise BadMessage(f"header must be a JSON object, got {type(header).__name__}")
    _check_optional_fields(header)
    if is_jpeg(header):
        return header, decode_jpeg(payload, max_bytes=max_frame_bytes)
    return header, _array_view(header, payload, max_frame_bytes, allowed_dtypes)


def is_jpeg(header: dict[str, Any]) -> bool:
    """Whether a (valid) header announces a JPEG payload rather than a raw array."""
    return header.get("jpg") is True or ("dtype" not in header and "shape" not in header)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_optional_fields(header: dict[str, Any]) -> None:
    seq = header.get("seq")
    if seq is not None and not (_is_int(seq) and seq >= 0):
        raise BadMessage(f"header seq must be a non-negative integer, got {short(seq)}")
    stamp = header.get("timestamp")
    if stamp is not None and not (
        isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and math.isfinite(stamp)
    ):
        raise BadMessage(f"header timestamp must be a finite number of seconds, got {short(stamp)}")


def _array_view(
    header: dict[str, Any], payload: bytes | memoryview, max_frame_bytes: int, allowed: Sequence[str]
) -> np.ndarray:
    dtype, shape = header.get("dtype"), header.get("shape")
    if not isinstance(dtype, str) or dtype not in allowed:
        raise BadMessage(f"dtype {short(dtype)} is not allowed (allowed: {', '.join(allowed)})")
    if not (isinstance(shape, list) and len(shape) in (2, 3) and all(_is_int(d) and d > 0 for d in shape)):
        raise BadMessage(f"shape must be [H, W] or [H, W, C] of positive integers, got {str(shape)[:80]}")
    if len(shape) == 3 and shape[2] not in (1, 3):
        raise BadMessage(f"shape {shape} has {shape[2]} channels; send 1 (gray) or 3 (colour)")
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes > max_frame_bytes:
        raise BadMessage(f"header claims a {nbytes}-byte frame {shape}, over max_frame_bytes={max_frame_bytes}")
    if nbytes != len(payload):
        raise BadMessage(f"payload has {len(payload)} bytes but shape {shape} of {dtype} needs {nbytes}")
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


def _now_if_none(timestamp: float | None) -> float:
    return time.time() if timestamp is None else timestamp


class FrameSender:
    """Pushes frames in the wire format: for producers, demos and tests.

    Every message carries ``seq`` (counting from 0 unless given) and ``timestamp`` (now unless
    given), so a receiver can show gaps and measure latency.

    Args:
        url: ZeroMQ endpoint, e.g. ``tcp://127.0.0.1:5555`` (``tcp://*:5555`` to bind on all).
        pattern: ``"pub"`` (receivers: zmq+sub) or ``"push"`` (receivers: zmq+pull).
        bind: bind ``url`` (imagezmq's PUB does) instead of connecting to it.
        topic: for ``pub``: a leading topic frame to send, or b"" for none (imagezmq style).
    """

    def __init__(self, url: str, *, pattern: str = "pub", bind: bool = True, topic: bytes = b"") -> None:
        kinds = {"pub": zmq.XPUB, "push": zmq.PUSH}  # XPUB: a PUB that also sees subscriptions
        if pattern not in kinds:
            raise SourceError(f"sender pattern must be 'pub' or 'push', got {pattern!r}")
        self._context = zmq.Context()
        self._socket = self._context.socket(kinds[pattern])
        self._socket.setsockopt(zmq.LINGER, 1000)
        try:
            (self._socket.bind if bind else self._socket.connect)(url)
        except zmq.ZMQError as exc:
            self.close()
            raise SourceError(f"cannot {'bind' if bind else 'connect'} sender to {url}: {exc}") from None
        self._prefix = [topic] if topic else []
        self._seq = 0

    def wait_for_subscriber(self, timeout: float) -> bool:
        """``pub`` only: block until a subscriber has joined (True) or ``timeout`` seconds pass
        (False). Frames published before anyone subscribes are lost, as with any PUB socket."""
        if self._socket.type != zmq.XPUB:
            raise SourceError("wait_for_subscriber applies to pattern 'pub' only")
        if not self._socket.poll(int(timeout * 1000)):
            return False
        self._socket.recv()  # the subscription message
        return True

    def send_array(
        self, array: np.ndarray, *, msg: str = "", seq: int | None = None, timestamp: float | None = None
    ) -> None:
        """Send a raw array."""
        self.send_parts(encode_array(array, msg=msg, seq=self._next_seq(seq), timestamp=_now_if_none(timestamp)))

    def send_jpg(
        self,
        image: np.ndarray | bytes,
        *,
        msg: str = "",
        seq: int | None = None,
        timestamp: float | None = None,
        quality: int = 90,
    ) -> None:
        """Send a JPEG (an array to encode, or JPEG bytes)."""
        parts = encode_jpg(image, msg=msg, seq=self._next_seq(seq), timestamp=_now_if_none(timestamp), quality=quality)
        self.send_parts(parts)

    def _next_seq(self, seq: int | None) -> int:
        self._seq = self._seq if seq is None else seq
        self._seq += 1
        return self._seq - 1

    def send_parts(self, parts: list[bytes]) -> None:
        """Send an already encoded message (``encode_array`` / ``encode_jpg`` output) as is,
        after the topic frame if one is set."""
        self._socket.send_multipart(self._prefix + list(parts), copy=False)

    def close(self) -> None:
        self._socket.close()
        self._context.term()

    def __enter__(self) -> FrameSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
