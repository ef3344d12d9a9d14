"""Frames pushed by another process over ZeroMQ (SUB, PULL, or REP for imagezmq's REQ/REP
senders), in the wire format of ``sources.wire`` (imagezmq compatible).

Every message is validated before anything is allocated; a bad one (whatever goes wrong while
decoding it) is counted in ``counters["bad_messages"]``, logged (rate-limited, sender text cut
short), and skipped, never fatal. Payloads larger than ``max_frame_bytes`` are refused by
ZeroMQ itself (``ZMQ_MAXMSGSIZE``: the sender's connection is dropped and re-established) so
they are never received at all.

Memory is bounded by frames, not by senders: ZeroMQ queues at most ``rcvhwm`` messages per
connected peer (``ZMQ_RCVHWM``), and the reader takes every waiting message off the socket
before decoding one, keeping at most ``backlog`` undecoded messages and ``backlog_bytes`` of
them (always the newest one); when the reader lags (decoding slower than the feed) the oldest
are dropped there, at the socket, and counted in
``counters["overflow"]`` (the stream's ``frames_dropped``) and ``counters["socket_dropped"]``.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from collections.abc import Generator, Sequence
from typing import Any
from urllib.parse import urlsplit

import zmq
from zmq.utils.monitor import recv_monitor_message

from core.bounds import check
from core.errors import SourceError

from .base import Source
from .frame import Frame
from .guard import DEFAULT_MAX_FRAME_BYTES, SUPPORTED_DTYPES, BadCounter, BadMessage, check_limit, short
from .image import OutputFormat, normalise_size
from .options import Converter, boolean, live_only, merge_query, names, typed
from .wire import MAX_HEADER_BYTES, decode_message, is_jpeg

log = logging.getLogger(__name__)

_TCP = re.compile(r"tcp://(?P<host>\[[^\]]+\]|[^:/\s]+):(?P<port>\d{1,5})")
_PATTERNS = {"sub": zmq.SUB, "pull": zmq.PULL, "rep": zmq.REP}
_REPLY = b"OK"  # what imagezmq's ImageHub answers each request with
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
_PEER_EVENTS = (
    zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
) | sum(_HANDSHAKE_FAILED)
_WHICH_SENDER = "REQ senders such as imagezmq's default ImageSender need zmq+rep://, PUB zmq+sub://, PUSH zmq+pull://"


def tcp_port(url: str) -> int:
    """The port of a ``tcp://HOST:PORT`` endpoint; SourceError for anything else."""
    match = _TCP.fullmatch(url)
    if not match or not 0 < int(match["port"]) < 65536:
        raise SourceError(f"ZeroMQ endpoint {url!r} is not tcp://HOST:PORT (port 1-65535); e.g. tcp://127.0.0.1:5555")
    return int(match["port"])


class ZmqSource(Source):
    """Receives frames from ZeroMQ publishers (``pattern="sub"``), pushers (``"pull"``) or
    requesters (``"rep"``: imagezmq's default REQ/REP ``ImageSender``; every request is answered
    ``b"OK"`` as imagezmq's ``ImageHub`` does, bad ones included, so the sender never hangs).

    The frame's ``seq`` counts received frames from 0; when headers carry ``seq``, a jump in it
    (frames the sender sent that never arrived) advances ``seq`` by the same amount and is
    counted in ``counters["missed_frames"]``. A jump larger than ``max_seq_jump`` is not
    trusted: the message is counted as bad and the sender's numbering starts again from it.
    ``t_capture`` is the header ``timestamp`` when present, else the receive time; a timestamp
    more than ``max_clock_skew`` seconds away from the receive time makes the message bad.

    Args:
        url: ``tcp://HOST:PORT`` to connect to (or to bind, e.g. ``tcp://*:5555``).
        pattern: ``"sub"``, ``"pull"`` or ``"rep"``.
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
        rgb: raw 3-channel arrays are RGB. Default False: they are BGR, OpenCV's order, which
            imagezmq's ``send_image`` sends. (JPEG payloads carry their own colour space.)
        rcvhwm: messages ZeroMQ may queue per connected peer (``ZMQ_RCVHWM``).
        backlog: undecoded messages the reader holds; beyond that the oldest are dropped.
        backlog_bytes: bytes of undecoded messages the reader holds (the newest is always
            kept); beyond that the oldest are dropped.
        max_seq_jump: largest trusted jump in the header ``seq``.
        max_clock_skew: largest distance in seconds between a header ``timestamp`` and the
            receive time.
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
        rgb: bool = False,
        rcvhwm: int = 2,
        backlog: int = 32,
        backlog_bytes: int = 32 * 2**20,
        max_seq_jump: int = 100_000,
        max_clock_skew: float = 86_400.0,
    ) -> None:
        port = tcp_port(url)
        super().__init__(name=name or f"zmq-{port}", queue_size=queue_size, live=True)
        if pattern not in _PATTERNS:
            raise SourceError(f"ZeroMQ pattern must be 'sub', 'pull' or 'rep', got {pattern!r}")
        numbers = {
            "rcvhwm": rcvhwm,
            "backlog": backlog,
            "backlog_bytes": backlog_bytes,
            "max_seq_jump": max_seq_jump,
            "max_clock_skew": max_clock_skew,
            "queue_size": queue_size,
        }
        for key, value in numbers.items():
            check(key, value, context=f" (source {url})", error=SourceError)
        if topic and pattern != "sub":
            raise SourceError("a ZeroMQ topic only applies to pattern 'sub'; drop the topic for 'pull'")
        unknown = [d for d in allowed_dtypes if d not in SUPPORTED_DTYPES]
        if unknown or not allowed_dtypes:
            raise SourceError(f"allowed_dtypes {list(allowed_dtypes)} must be taken from {', '.join(SUPPORTED_DTYPES)}")
        self.url = url
        self.pattern = pattern
        self.bind = bind
        self.topic = topic.encode() if isinstance(topic, str) else bytes(topic)
        self._max_frame_bytes = check_limit("max_frame_bytes", max_frame_bytes)
        self._allowed = tuple(allowed_dtypes)
        self._output = OutputFormat(gray=gray, size=normalise_size(size), max_bytes=self._max_frame_bytes)
        self.rgb = bool(rgb)
        self._rcvhwm, self._backlog, self._backlog_bytes = rcvhwm, backlog, backlog_bytes
        self._waiting_bytes = 0
        self._max_seq_jump, self._max_skew = max_seq_jump, float(max_clock_skew)
        self.counters.update(bad_messages=0, missed_frames=0, socket_dropped=0)
        self._count_bad = BadCounter(self.name, self.counters, log, "message")
        self._count_lock = threading.Lock()  # "overflow" is counted by the reader and the loop
        self._context: zmq.Context | None = None
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._poller: zmq.Poller | None = None
        self._unshaken: set[int] = set()  # connections (fds) whose handshake has not succeeded yet
        self.counters["handshake_failures"] = 0
        self._seq = 0
        self._sender_seq: int | None = None

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
    ) -> ZmqSource:
        """``zmq+sub://HOST:PORT``, ``zmq+pull://HOST:PORT`` or ``zmq+rep://HOST:PORT`` (binds
        unless ``?bind=0``); options in the query or as keywords."""
        parts = urlsplit(spec)
        live_only(spec, speed, pacing, loop)
        table: dict[str, Converter] = {
            "bind": boolean,
            "topic": str,
            "max_frame_bytes": int,
            "allowed_dtypes": names,
            "queue_size": int,
            "rgb": boolean,
            "rcvhwm": int,
            "backlog": int,
            "backlog_bytes": int,
            "max_seq_jump": int,
            "max_clock_skew": float,
        }
        options = typed(spec, merge_query(spec, parts.query, options), table)
        pattern = parts.scheme.partition("+")[2]
        if pattern == "rep":  # imagezmq's REQ senders connect to a hub that binds
            options.setdefault("bind", True)
        return cls(f"tcp://{parts.netloc}", pattern=pattern, name=name, gray=gray, size=size, **options)

    def _open(self) -> None:
        self._context = zmq.Context()
        sock = self._context.socket(_PATTERNS[self.pattern])
        self._socket = sock
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max(self._max_frame_bytes, MAX_HEADER_BYTES))
        sock.setsockopt(zmq.RCVHWM, self._rcvhwm)
        if self.pattern == "sub":
            sock.setsockopt(zmq.SUBSCRIBE, self.topic)
        self._monitor = sock.get_monitor_socket(_PEER_EVENTS)
        try:
            (sock.bind if self.bind else sock.connect)(self.url)
        except zmq.ZMQError as exc:
            self._close()
            action = "bind" if self.bind else "connect"
            raise SourceError(
                f"cannot {action} ZeroMQ {self.pattern} socket to {self.url}: {exc}; check the address and port"
            ) from None
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    def _watch_peers(self) -> None:
        """Read the socket's monitor: a connection that ends before its ZeroMQ handshake succeeded
        is a peer that cannot talk to this socket (a REQ sender aimed at zmq+sub:// or zmq+pull://,
        which libzmq disconnects without a word while the sender waits forever, or not ZeroMQ at
        all). It is counted in ``counters["handshake_failures"]`` and logged (rate-limited)."""
        monitor = self._monitor
        assert monitor is not None
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, fd = event["event"], event["value"]
            if kind in (zmq.EVENT_ACCEPTED, zmq.EVENT_CONNECTED):
                self._unshaken.add(fd)
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._unshaken.discard(fd)
            elif kind == zmq.EVENT_DISCONNECTED and fd in self._unshaken or kind in _HANDSHAKE_FAILED:
                self._unshaken.discard(fd)
                count = self.counters["handshake_failures"] = self.counters["handshake_failures"] + 1
                if count <= 3 or count % 100 == 0:
                    log.warning(
                        "%s: a peer connected to %s and was dropped before the ZeroMQ handshake completed: its "
                        "socket type cannot talk to %s (%s), or it does not speak ZeroMQ; %d so far",
                        self.name,
                        self.url,
                        self.pattern.upper(),
                        _WHICH_SENDER,
                        count,
                    )

    def _produce(self, stop: threading.Event) -> Generator[Frame, None, None]:
        waiting: collections.deque[tuple[list[zmq.Frame], float, int]] = collections.deque()
        self._waiting_bytes = 0
        sock, poller = self._socket, self._poller
        assert sock is not None and poller is not None  # opened before the producer runs
        while not stop.is_set():
            if not waiting:
                ready = dict(poller.poll(100))
                if self._monitor in ready:
                    self._watch_peers()
                if sock not in ready:
                    continue
            if self.pattern == "rep":  # one request at a time; the sender waits for the answer
                parts = sock.recv_multipart(copy=False)
                sock.send(_REPLY)
                waiting.append((parts, time.time(), 0))
            else:
                self._take_waiting(waiting)
                if not waiting:  # poll saw an event but no whole message was there
                    continue
            parts, received, size = waiting.popleft()
            self._waiting_bytes -= size
            frame = self._accept([p.buffer for p in parts], received)
            del parts
            if frame is not None:
                yield frame

    def _take_waiting(self, waiting: collections.deque[tuple[list[zmq.Frame], float, int]]) -> None:
        """Move the messages ZeroMQ holds into ``waiting`` (no copy, no decoding), keeping the
        newest within ``backlog`` and ``backlog_bytes``: a lagging reader drops the oldest here."""
        sock = self._socket
        assert sock is not None  # opened before the producer runs
        for _ in range(self._rcvhwm + self._backlog + 64):  # bounded: a fast feed cannot starve decoding
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            size = sum(len(p) for p in parts)
            waiting.append((parts, time.time(), size))
            self._waiting_bytes += size
            while len(waiting) > 1 and (len(waiting) > self._backlog or self._waiting_bytes > self._backlog_bytes):
                self._waiting_bytes -= waiting.popleft()[2]
                with self._count_lock:
                    self.counters["overflow"] += 1
                    self.counters["socket_dropped"] += 1

    def _count_overflow(self) -> None:
        with self._count_lock:
            self.counters["overflow"] += 1

    def _accept(self, parts: list[bytes | memoryview], received: float) -> Frame | None:
        try:
            if self.topic:
                if not parts or bytes(parts[0][: len(self.topic)]) != self.topic:
                    raise BadMessage(f"expected a leading topic frame {short(self.topic)}")
                parts = parts[1:]
            header, array = decode_message(parts, max_frame_bytes=self._max_frame_bytes, allowed_dtypes=self._allowed)
            t_capture = self._capture_time(header, received)
            missed = self._missed(header.get("seq"))
            bgr = array.ndim == 3 and array.shape[2] == 3 and not self.rgb and not is_jpeg(header)
            image = self._output.apply(array, bgr=bgr)
        except Exception as exc:  # noqa: BLE001 - nothing one message does may end the stream
            self._count_bad(exc)
            return None
        if missed:
            self.counters["missed_frames"] += missed
            self._seq += missed
        frame = self._frame(self._seq, image, t_capture)
        self._seq += 1
        return frame

    def _capture_time(self, header: dict, received: float) -> float:
        stamp = header.get("timestamp")
        if stamp is None:
            return received
        if abs(stamp - received) > self._max_skew:
            raise BadMessage(
                f"timestamp {short(stamp, 30)} is {stamp - received:+.3g} s from the receive time (limit "
                f"{self._max_skew:g} s); send time.time() at capture, or no timestamp"
            )
        return float(stamp)

    def _missed(self, sender_seq: int | None) -> int:
        """Frames the sender numbered but that never arrived; a jump over ``max_seq_jump`` is
        refused (BadMessage) and the sender's numbering restarts from it."""
        last, self._sender_seq = self._sender_seq, sender_seq
        if sender_seq is None or last is None or sender_seq <= last + 1:
            return 0
        if sender_seq - last - 1 > self._max_seq_jump:
            raise BadMessage(
                f"seq jumped from {last} to {short(sender_seq, 30)}, over max_seq_jump={self._max_seq_jump}; "
                "numbering restarts from it"
            )
        return sender_seq - last - 1

    def _close(self) -> None:
        if self._monitor is not None and self._socket is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._context is not None:
            self._context.term()
            self._context = None
