"""Images from an OpenIGTLink server (3D Slicer's OpenIGTLinkIF, PlusServer, a scanner's
research interface), through pyigtl's message classes.

The source connects to the server as a client and takes its IMAGE messages: 2-D uint8 images,
gray (1 component) or RGB (3 components). Other message types (TRANSFORM, STATUS, ...) and
images of other devices are skipped and counted in ``counters["ignored_messages"]``; IMAGE
messages that cannot be used (CRC mismatch, a volume, a scalar type other than uint8, a
component count other than 1 or 3, an unreadable body) in ``counters["bad_messages"]``.

pyigtl's own ``OpenIGTLinkClient`` is not used for the connection: it keeps only the newest
message of each device (older ones vanish uncounted), retries a lost connection every 10 ms, and
does not notice a server that closed the connection. The socket is read here, in the source's
reader thread, and pyigtl parses the header and unpacks the IMAGE body. Reconnection (backoff,
gap accounting) is ``ProbeSource``'s.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Generator
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from pyigtl.messages import CRC64, ImageMessage, MessageBase

from core.errors import SourceError

from .base import derive_name
from .frame import Frame
from .guard import DEFAULT_MAX_FRAME_BYTES, BadCounter, BadMessage, check_limit
from .image import OutputFormat, normalise_size
from .options import Converter, boolean, live_only, merge_query, optional_int, typed
from .probe import ProbeSource, _FeedLost

log = logging.getLogger(__name__)

DEFAULT_PORT = 18944  # the port IANA assigned to OpenIGTLink
_HEADER = MessageBase.IGTL_HEADER_SIZE  # 58 bytes
_CRC = struct.Struct(">Q")  # the header's last field
_POLL = 0.2  # seconds between checks of the stop flag while the socket is silent


def image_of(message: ImageMessage) -> np.ndarray:
    """The (H, W) gray or (H, W, 3) RGB uint8 image an IMAGE message holds.

    pyigtl's arrays are (k, j, i[, components]). A 2-D image has one slice (k = 1); pyigtl's
    ``ImageMessage`` given a plain (rows, columns) array sends it with i = 1 instead, which is
    accepted too.

    Raises:
        BadMessage: not uint8, a volume, or not 1 or 3 components.
    """
    data = message.image
    if data is None or data.dtype != np.uint8:
        kind = "no pixels" if data is None else f"{data.dtype} pixels"
        raise BadMessage(f"IMAGE {message.device_name!r} holds {kind}; send uint8")
    components = data.shape[3] if data.ndim == 4 else 1
    if components not in (1, 3):
        raise BadMessage(f"IMAGE {message.device_name!r} has {components} components; send 1 (gray) or 3 (RGB)")
    k, j, i = data.shape[:3]
    if k == 1:
        image = data[0]
    elif i == 1:
        image = data[:, :, 0]
    else:
        raise BadMessage(f"IMAGE {message.device_name!r} is a {i}x{j}x{k} volume; send 2-D images (one slice)")
    return np.ascontiguousarray(image)


class _IgtlFeed:
    """One TCP connection to the server; ``read()`` returns the next usable image."""

    rate: float | None = None  # OpenIGTLink states no frame rate: gaps are estimated from the arrivals

    def __init__(self, source: IgtlSource) -> None:
        self._source = source
        try:
            self._sock = socket.create_connection((source.host, source.port), timeout=source.timeout)
        except OSError as exc:
            raise _FeedLost(f"cannot connect: {exc.strerror or exc}") from None
        self._sock.settimeout(_POLL)

    def _receive(self, size: int) -> bytearray:
        """Exactly ``size`` bytes; _FeedLost when the server goes, stays silent, or we stop."""
        buffer = bytearray(size)
        view, got, last = memoryview(buffer), 0, time.monotonic()
        while got < size:
            if self._source.stopping.is_set():
                raise _FeedLost("closing")
            try:
                n = self._sock.recv_into(view[got:])
            except TimeoutError:
                if time.monotonic() - last > self._source.timeout:
                    raise _FeedLost(f"no data for {self._source.timeout:g} s") from None
                continue
            except OSError as exc:
                raise _FeedLost(exc.strerror or str(exc)) from None
            if n == 0:
                raise _FeedLost("the server closed the connection")
            got, last = got + n, time.monotonic()
        return buffer

    def read(self) -> np.ndarray:
        source = self._source
        while True:
            header = self._receive(_HEADER)
            try:
                fields = MessageBase.parse_header(bytes(header))
            except (UnicodeDecodeError, struct.error):
                fields = None
            if (
                fields is None
                or fields["header_version"] not in (1, 2)
                or fields["body_size"] > source.max_message_bytes
            ):
                source.count_bad("unreadable message header or body over max_message_bytes")
                raise _FeedLost("lost the message boundaries; reconnecting to resynchronise")
            body = bytes(self._receive(fields["body_size"]))
            if fields["message_type"] != "IMAGE" or source.device_name not in (None, fields["device_name"]):
                source.counters["ignored_messages"] += 1
                continue
            if source.check_crc and CRC64(body) != _CRC.unpack_from(header, _HEADER - _CRC.size)[0]:
                source.count_bad(f"IMAGE {fields['device_name']!r} fails its CRC")
                continue
            message = ImageMessage()
            try:
                message.unpack(fields, body)
                image = source.output.apply(image_of(message))  # the frame guard runs first
            except Exception as exc:  # noqa: BLE001 - nothing one message does may end the stream
                source.count_bad(exc)
                continue
            if source.device_name is None:
                source.lock(fields["device_name"])
            return image

    def close(self) -> None:
        self._sock.close()


class IgtlSource(ProbeSource):
    """A live OpenIGTLink feed of IMAGE messages that survives server restarts.

    Args:
        host: the server's address.
        port: its port (OpenIGTLink's default is 18944).
        device: take only this device's images; the stream id defaults to it. None: the first
            device that sends an image is kept (logged), the stream id defaults to ``igtl-PORT``.
        name: stream id (see ``device``).
        gray: hand out (H, W) gray frames (RGB is converted), else (H, W, 3) RGB.
        size: resize frames (int or (width, height)); None keeps theirs.
        timeout: seconds without any message before the connection counts as lost; also the
            limit of each connection attempt.
        reconnect_initial, reconnect_max, max_reconnects, open_attempts: the backoff of
            ``ProbeSource``.
        queue_size: frames buffered for a slow consumer before the oldest are dropped.
        check_crc: verify each IMAGE body's CRC-64 (the header's) and skip mismatches.
        max_message_bytes: the largest message body accepted; a larger one means the stream is
            out of step (or hostile): it is counted and the connection is remade.

    Counters: ``bad_messages``, ``ignored_messages``, ``reconnects``, ``gaps``, ``gap_frames``,
    ``overflow``.
    """

    _feed_kind = "OpenIGTLink server"
    _open_hint = "check HOST:PORT and that the server (Slicer OpenIGTLinkIF, PlusServer, ...) is running"

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        device: str | None = None,
        name: str | None = None,
        gray: bool = True,
        size: int | tuple[int, int] | None = None,
        timeout: float = 5.0,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 10.0,
        max_reconnects: int | None = None,
        open_attempts: int = 3,
        queue_size: int = 8,
        check_crc: bool = True,
        max_message_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        if not (isinstance(host, str) and host and isinstance(port, int) and 0 < port < 65536):
            raise SourceError(f"OpenIGTLink server must be HOST and a port 1-65535, got {host!r}:{port!r}")
        if device is not None and not (isinstance(device, str) and device and len(device.encode()) <= 20):
            raise SourceError(f"OpenIGTLink device name {device!r} must be 1-20 bytes; give the name the server sends")
        check_limit("max_message_bytes", max_message_bytes)
        default = derive_name(device) if device else f"igtl-{port}"
        super().__init__(
            f"igtl://{host}:{port}",
            name=name or default,
            gray=gray,
            size=size,
            timeout=timeout,
            reconnect_initial=reconnect_initial,
            reconnect_max=reconnect_max,
            max_reconnects=max_reconnects,
            open_attempts=open_attempts,
            queue_size=queue_size,
        )
        self.host, self.port, self.timeout = host, port, timeout
        self.device_name = device  # ProbeSource's ``device`` is the server's URL
        self.check_crc = check_crc
        self.max_message_bytes = max_message_bytes
        self.output = OutputFormat(gray=gray, size=normalise_size(size), max_bytes=max_message_bytes)
        self.stopping = threading.Event()  # the reader thread's stop flag, once it runs
        self.counters.pop("decode_errors", None)
        self.counters.update(bad_messages=0, ignored_messages=0)
        self.count_bad = BadCounter(self.name, self.counters, log, "OpenIGTLink message")
        self._new_feed = lambda: _IgtlFeed(self)

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
    ) -> IgtlSource:
        """``igtl://HOST[:PORT][?device=NAME&timeout=S&...]`` (options as the keyword arguments)."""
        parts = urlsplit(spec)
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            port = None
        if parts.scheme != "igtl" or not parts.hostname or port is None or parts.path not in ("", "/"):
            raise SourceError(
                f"source spec {spec!r} is not igtl://HOST:PORT (e.g. igtl://127.0.0.1:18944?device=Image)"
            )
        live_only(spec, speed, pacing, loop)
        table: dict[str, Converter] = {
            "device": str,
            "timeout": float,
            "reconnect_initial": float,
            "reconnect_max": float,
            "max_reconnects": optional_int,
            "open_attempts": int,
            "queue_size": int,
            "check_crc": boolean,
            "max_message_bytes": int,
        }
        given = typed(spec, merge_query(spec, parts.query, options), table)
        return cls(parts.hostname, port, name=name, gray=gray, size=size, **given)

    def lock(self, device: str) -> None:
        """Keep ``device`` (the first to send an image) from now on."""
        self.device_name = device
        log.info(
            "%s: taking the images of OpenIGTLink device %r (others are ignored; pick one with ?device=NAME)",
            self.name,
            device,
        )

    def _produce(self, stop: threading.Event) -> Generator[Frame, None, None]:
        self.stopping = stop
        yield from super()._produce(stop)
