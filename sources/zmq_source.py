"""Frames pushed by another process over ZeroMQ (SUB or PULL), in the wire format of
``sources.wire`` (imagezmq compatible).

Every message is validated before anything is allocated; a bad one is counted in
``counters["bad_messages"]``, logged, and skipped, never fatal. Payloads larger than
``max_frame_bytes`` are refused by ZeroMQ itself (``ZMQ_MAXMSGSIZE``: the sender's connection is
dropped and re-established) so they are never received at all.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import zmq

from .base import Source
from .errors import SourceError
from .frame import Frame
from .image import OutputFormat, normalise_size
from .options import boolean, live_only, merge_query, names, typed
from .wire import DEFAULT_MAX_FRAME_BYTES, MAX_HEADER_BYTES, SUPPORTED_DTYPES, BadMessage, decode_message, to_uint8

log = logging.getLogger(__name__)

_TCP = re.compile(r"tcp://(?P<host>\[[^\]]+\]|[^:/\s]+):(?P<port>\d{1,5})")
_LOG_FIRST = 10  # bad messages logged one by one; after that one line per _LOG_EVERY
_LOG_EVERY = 100


def tcp_port(url: str) -> int:
    """The port of a ``tcp://HOST:PORT`` endpoint; SourceError for anything else."""
    match = _TCP.fullmatch(url)
    if not match or not 0 < int(match["port"]) < 65536:
        raise SourceError(f"ZeroMQ endpoint {url!r} is not tcp://HOST:PORT (port 1-65535); e.g. tcp://127.0.0.1:5555")
    return int(match["port"])


class ZmqSource(Source):
    """Receives frames from ZeroMQ publishers (``pattern="sub"``) or pushers (``"pull"``).

    The frame's ``seq`` counts received frames from 0; when headers carry ``seq``, a jump in it
    (frames the sender sent that never arrived) advances ``seq`` by the same amount and is
    counted in ``counters["missed_frames"]``. ``t_capture`` is the header ``timestamp`` when
    present, else the receive time.

    Args:
        url: ``tcp://HOST:PORT`` to connect to (or to bind, e.g. ``tcp://*:5555``).
        pattern: ``"sub"`` or ``"pull"``.
        bind: bind instead of connect (senders then connect to us).
        name: stream id; default ``zmq-PORT``.
        topic: SUB only: subscribe to this topic and expect it as a leading frame;
            b"" (default, imagezmq style) means no topic frame.
        max_frame_bytes: largest payload accepted (raw bytes, or decoded JPEG size).
        allowed_dtypes: raw array dtypes accepted, from ``wire.SUPPORTED_DTYPES``; non-uint8
            frames are converted (uint16: high byte; float32: [0, 1] scaled to 0-255).
        gray: hand out (H, W) gray frames (colour is converted), else (H, W, 3) RGB.
        size: resize frames to this size (int or (width, height)); None keeps theirs.
        queue_size: frames buffered for a slow consumer before the oldest are dropped
            (counted in ``counters["overflow"]``).
    """

    def __init__(
        self,
        url: str,
        *,
        pattern: str = "sub",
        bind: bool = False,
        name: str | None = None,
        topic: bytes | str = b"",
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        allowed_dtypes: Sequence[str] = ("uint8",),
        gray: bool = True,
        size: int | tuple[int, int] | None = None,
        queue_size: int = 16,
    ) -> None:
        port = tcp_port(url)
        super().__init__(name=name or f"zmq-{port}", queue_size=queue_size, live=True)
        if pattern not in ("sub", "pull"):
            raise SourceError(f"ZeroMQ pattern must be 'sub' or 'pull', got {pattern!r}")
        if topic and pattern != "sub":
            raise SourceError("a ZeroMQ topic only applies to pattern 'sub'; drop the topic for 'pull'")
        unknown = [d for d in allowed_dtypes if d not in SUPPORTED_DTYPES]
        if unknown or not allowed_dtypes:
            raise SourceError(f"allowed_dtypes {list(allowed_dtypes)} must be taken from {', '.join(SUPPORTED_DTYPES)}")
        if not (isinstance(max_frame_bytes, int) and max_frame_bytes > 0):
            raise SourceError(f"max_frame_bytes must be a positive integer, got {max_frame_bytes!r}")
        self.url = url
        self.pattern = pattern
        self.bind = bind
        self.topic = topic.encode() if isinstance(topic, str) else bytes(topic)
        self._max_frame_bytes = max_frame_bytes
        self._allowed = tuple(allowed_dtypes)
        self._output = OutputFormat(gray=gray, size=normalise_size(size))
        self.counters.update(bad_messages=0, missed_frames=0)
        self._context: zmq.Context | None = None
        self._socket: zmq.Socket | None = None
        self._seq = 0
        self._sender_seq: int | None = None

    @classmethod
    def from_spec(cls, spec: str, *, name: str | None = None, speed: float = 1.0, pacing: bool = True,
                  loop: bool = False, gray: bool = True, size: int | tuple[int, int] | None = None,
                  **options: Any) -> ZmqSource:
        """``zmq+sub://HOST:PORT`` or ``zmq+pull://HOST:PORT``; options in the query or as keywords."""
        parts = urlsplit(spec)
        live_only(spec, speed, pacing, loop)
        table = {"bind": boolean, "topic": str, "max_frame_bytes": int, "allowed_dtypes": names, "queue_size": int}
        options = typed(spec, merge_query(spec, parts.query, options), table)
        pattern = parts.scheme.partition("+")[2]
        return cls(f"tcp://{parts.netloc}", pattern=pattern, name=name, gray=gray, size=size, **options)

    def _open(self) -> None:
        self._context = zmq.Context()
        sock = self._context.socket(zmq.SUB if self.pattern == "sub" else zmq.PULL)
        self._socket = sock
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max(self._max_frame_bytes, MAX_HEADER_BYTES))
        if self.pattern == "sub":
            sock.setsockopt(zmq.SUBSCRIBE, self.topic)
        try:
            (sock.bind if self.bind else sock.connect)(self.url)
        except zmq.ZMQError as exc:
            self._close()
            action = "bind" if self.bind else "connect"
            raise SourceError(f"cannot {action} ZeroMQ {self.pattern} socket to {self.url}: {exc}; check the address and port") from None

    def _produce(self, stop: threading.Event) -> Iterator[Frame]:
        while not stop.is_set():
            if not self._socket.poll(100):
                continue
            parts = self._socket.recv_multipart()
            frame = self._accept(parts, time.time())
            if frame is not None:
                yield frame

    def _accept(self, parts: list[bytes], received: float) -> Frame | None:
        try:
            if self.topic:
                if not parts[0].startswith(self.topic):
                    raise BadMessage(f"expected a leading topic frame {self.topic!r}")
                parts = parts[1:]
            header, array = decode_message(parts, max_frame_bytes=self._max_frame_bytes, allowed_dtypes=self._allowed)
        except BadMessage as exc:
            self._count_bad(exc)
            return None
        image = self._output.apply(to_uint8(array))
        sender_seq = header.get("seq")
        if sender_seq is not None and self._sender_seq is not None and sender_seq > self._sender_seq + 1:
            missed = sender_seq - self._sender_seq - 1
            self.counters["missed_frames"] += missed
            self._seq += missed
        self._sender_seq = sender_seq
        frame = self._frame(self._seq, image, header.get("timestamp", received))
        self._seq += 1
        return frame

    def _count_bad(self, exc: BadMessage) -> None:
        count = self.counters["bad_messages"] = self.counters["bad_messages"] + 1
        if count <= _LOG_FIRST or count % _LOG_EVERY == 0:
            log.warning("%s: bad message skipped (%s); %d so far", self.name, exc, count)

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._context is not None:
            self._context.term()
            self._context = None
