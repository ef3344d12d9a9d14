"""A live probe feed: a capture device through OpenCV (frame grabber or UVC camera: an index or
/dev/videoN), or a network stream (udp://, rtsp://, http://, ...) through PyAV/FFmpeg.

When the feed drops (no frame for ``timeout`` seconds, the device stops delivering, the stream
ends) the source reconnects with exponential backoff. When frames come back it logs the gap,
counts it (``gaps``, estimated ``gap_frames``) and skips ``seq`` by the estimated number of
missed frames, so the gap stays visible downstream.

``t_capture`` is when the frame was captured, not when the source could hand it out. A network
demuxer and decoder hold the last frames before a drop-out until the read timeout fires (an
MPEG-TS packet is complete only when the next one starts); those frames are stamped from the
stream's own clock (their pts, put on the wall clock by the least-delayed recent arrival), so
they keep their real time and the gap is measured from the last real frame.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, Protocol
from urllib.parse import urlsplit

import av
import cv2
import numpy as np

from core.bounds import check
from core.errors import SourceError

from .base import Source, derive_name
from .frame import Frame
from .guard import BadCounter, BadMessage
from .image import OutputFormat, normalise_size
from .options import Converter, live_only, optional_int, typed
from .video import FALLBACK_RATE, FrameConverter, ffmpeg_reason

log = logging.getLogger(__name__)

# Measured on MPEG-TS over udp://127.0.0.1: FFmpeg's default probing (5 s analyzeduration)
# delays the first frame by seconds; these open a stream in well under a second.
_NETWORK_OPTIONS = {"fflags": "nobuffer", "probesize": "500000", "analyzeduration": "500000"}
# UDP: a large receive FIFO, and no fatal error when it overruns (the decoder resyncs).
_UDP_OPTIONS = {"fifo_size": "1000000", "overrun_nonfatal": "1"}
_RTSP_OPTIONS = {"rtsp_transport": "tcp"}  # interleaved over TCP: no lost packets behind NATs


class _FeedLost(Exception):
    """The feed stopped delivering frames (or could not be opened); the text says why."""


class Feed(Protocol):
    """A connection to a live feed: ``read()`` the next image (with its capture time, or alone
    to be stamped now), ``close()``; ``rate`` is its frame rate when the feed states one."""

    rate: float | None

    def read(self) -> tuple[np.ndarray, float] | np.ndarray: ...
    def close(self) -> None: ...


class _OpenCvFeed:
    """A capture device (or anything ``cv2.VideoCapture`` opens) as one connection."""

    def __init__(self, device: int | str, output: OutputFormat) -> None:
        self._capture = cv2.VideoCapture(device)
        if not self._capture.isOpened():
            self._capture.release()
            raise _FeedLost(f"OpenCV cannot open capture device {device!r}")
        self.rate = self._capture.get(cv2.CAP_PROP_FPS) or None
        self._output = output

    def read(self) -> tuple[np.ndarray, float]:
        """The next frame and its capture time (when the device delivered it)."""
        ok, image = self._capture.read()
        stamp = time.time()
        if not ok:
            raise _FeedLost("the device delivered no frame")
        return self._output.apply(image, bgr=image.ndim == 3), stamp

    def close(self) -> None:
        self._capture.release()


class _PyAvFeed:
    """A network stream opened by FFmpeg as one connection; undecodable packets are skipped
    and counted in ``counters["decode_errors"]``, frames the guard refuses in ``bad``."""

    def __init__(
        self, url: str, output: OutputFormat, timeout: float, counters: dict[str, int], bad: BadCounter
    ) -> None:
        options = dict(_NETWORK_OPTIONS)
        scheme = urlsplit(url).scheme
        options.update(_UDP_OPTIONS if scheme == "udp" else _RTSP_OPTIONS if scheme == "rtsp" else {})
        try:
            self._container = av.open(url, options=options, timeout=(timeout, timeout))
        except (av.FFmpegError, OSError) as exc:
            raise _FeedLost(ffmpeg_reason(exc)) from None
        if not self._container.streams.video:
            self._container.close()
            raise _FeedLost("the stream holds no video")
        stream = self._container.streams.video[0]
        self.rate = float(stream.average_rate) if stream.average_rate else None
        self._convert = FrameConverter(output)
        self._counters = counters
        self._bad = bad
        self._offsets: collections.deque[float] = collections.deque(maxlen=64)  # arrival - pts, recent frames
        self._frames = self._decode(stream)

    def _decode(self, stream: av.video.stream.VideoStream) -> Iterator[tuple[np.ndarray, float]]:
        for packet in self._container.demux(stream):
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                self._counters["decode_errors"] += 1
                continue
            arrived = time.time()
            for frame in frames:
                try:
                    image = self._convert(frame)
                except BadMessage as exc:  # the frame guard: counted, never the end of the feed
                    self._bad(exc)
                    continue
                yield image, self._stamp(frame.time, arrived)

    def _stamp(self, pts: float | None, arrived: float) -> float:
        """Capture time of a frame with presentation time ``pts`` that came out at ``arrived``:
        ``pts`` plus the smallest recent (arrival - pts), i.e. the stream clock put on the wall
        clock by its least-delayed frames, never later than ``arrived``. A frame held back by the
        demuxer until a timeout keeps its real time."""
        if pts is None:
            return arrived
        self._offsets.append(arrived - pts)
        return min(arrived, pts + min(self._offsets))

    def read(self) -> tuple[np.ndarray, float]:
        """The next frame and its capture time."""
        try:
            return next(self._frames)
        except StopIteration:
            raise _FeedLost("the stream ended") from None
        except av.FFmpegError as exc:  # includes the read timeout
            raise _FeedLost(ffmpeg_reason(exc)) from None

    def close(self) -> None:
        self._container.close()


def _default_name(device: int | str) -> str:
    if isinstance(device, int):
        return f"probe{device}"
    match = re.fullmatch(r"/dev/video(\d+)", device)
    if match:
        return f"probe{match[1]}"
    if "://" in device:
        parts = urlsplit(device)
        return derive_name(f"probe-{parts.port}" if parts.port else f"probe-{parts.hostname}")
    return derive_name(f"probe-{device.rsplit('/', 1)[-1]}")


class ProbeSource(Source):
    """A live feed that survives drop-outs.

    Args:
        device: a capture index (``0``), a device path (``/dev/video0``; any path
            ``cv2.VideoCapture`` opens works), or a stream URL with ``://`` (udp, rtsp, http,
            ... through PyAV; FFmpeg URL options such as ``?fifo_size=`` are passed through).
        name: stream id; default ``probe0`` for index or /dev/video0, ``probe-PORT`` for URLs.
        gray: hand out (H, W) gray frames, else (H, W, 3) RGB.
        size: resize frames (int or (width, height)); None keeps theirs.
        timeout: seconds without data before a network feed counts as lost; also the limit
            for each network connection attempt.
        reconnect_initial: first wait before reconnecting, seconds; doubles per failed attempt.
        reconnect_max: longest wait between attempts, seconds.
        max_reconnects: failed reconnection attempts in a row after a drop before giving up
            (SourceError from the iterator); None keeps trying forever.
        open_attempts: attempts to connect on enter before SourceError (so a device that does
            not exist fails instead of hanging).
        queue_size: frames buffered for a slow consumer before the oldest are dropped
            (counted in ``counters["overflow"]``).

    Counters: ``reconnects`` (recoveries: frames flowing again after the feed was lost, however
    many connections that took), ``gaps``, ``gap_frames`` (estimated missed frames),
    ``decode_errors`` (skipped undecodable packets), ``bad_messages`` (frames the frame guard
    refused, see ``sources.guard``), ``overflow``. :attr:`reconnecting` is True from the loss of
    the feed until frames flow again.
    """

    # What a failed open names, and the hint it gives (subclasses with another kind of feed).
    _feed_kind = "probe"
    _open_hint = "check the device index or URL and that the probe is streaming"

    def __init__(
        self,
        device: int | str,
        *,
        name: str | None = None,
        gray: bool = True,
        size: int | tuple[int, int] | None = None,
        timeout: float = 5.0,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 10.0,
        max_reconnects: int | None = None,
        open_attempts: int = 3,
        queue_size: int = 8,
    ) -> None:
        if isinstance(device, str) and device.isdigit():
            device = int(device)
        if not (isinstance(device, int) and device >= 0 or isinstance(device, str) and device):
            raise SourceError(f"probe device must be an index >= 0, a device path or a stream URL, got {device!r}")
        numbers = {
            "timeout": timeout,
            "reconnect_initial": reconnect_initial,
            "reconnect_max": reconnect_max,
            "open_attempts": open_attempts,
            "max_reconnects": max_reconnects,  # None: forever
            "queue_size": queue_size,
        }
        for key, value in numbers.items():
            check(key, value, context=f" (source {device!r})", error=SourceError)
        if reconnect_initial > reconnect_max:
            raise SourceError(
                f"reconnect_initial {reconnect_initial} s is over reconnect_max {reconnect_max} s (source {device!r})"
            )
        super().__init__(name=name or _default_name(device), queue_size=queue_size, live=True)
        self.device = device
        self.counters.update(reconnects=0, gaps=0, gap_frames=0, decode_errors=0)
        self.count_bad = BadCounter(self.name, self.counters, log, "frame")
        output = OutputFormat(gray=gray, size=normalise_size(size))
        self._new_feed: Callable[[], Feed]
        if isinstance(device, str) and "://" in device:
            self._new_feed = lambda: _PyAvFeed(device, output, timeout, self.counters, self.count_bad)
        else:
            self._new_feed = lambda: _OpenCvFeed(device, output)
        self._initial, self._max_wait = reconnect_initial, reconnect_max
        self._max_reconnects, self._open_attempts = max_reconnects, open_attempts
        self._feed: Feed | None = None
        self.reconnecting = False  # the feed was lost and no frame has come back yet

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
    ) -> ProbeSource:
        """``probe:INDEX``, ``probe:/dev/videoN`` or ``probe:URL``; options as the keyword arguments."""
        device = spec.partition(":")[2]
        if not device:
            raise SourceError(
                f"source spec {spec!r} needs a device or URL: probe:0, probe:/dev/video0, probe:udp://HOST:PORT"
            )
        live_only(spec, speed, pacing, loop)
        table: dict[str, Converter] = {
            "timeout": float,
            "reconnect_initial": float,
            "reconnect_max": float,
            "max_reconnects": optional_int,
            "open_attempts": int,
            "queue_size": int,
        }
        return cls(device, name=name, gray=gray, size=size, **typed(spec, options, table))

    def _connect(self, attempts: int | None, stop: threading.Event) -> Feed | None:
        """A new feed, trying ``attempts`` times (None: until ``stop``) with backoff."""
        wait, attempt = self._initial, 0
        while True:
            try:
                return self._new_feed()
            except _FeedLost as exc:
                attempt += 1
                if attempts is not None and attempt >= attempts:
                    raise SourceError(
                        f"cannot open {self._feed_kind} {self.device}: {exc} ({attempt} attempts); {self._open_hint}"
                    ) from None
                log.warning("%s: connection attempt %d failed (%s); retrying in %.1f s", self.name, attempt, exc, wait)
            if stop.wait(wait):
                return None
            wait = min(2 * wait, self._max_wait)

    def _open(self) -> None:
        self._feed = self._connect(self._open_attempts, threading.Event())

    def _produce(self, stop: threading.Event) -> Generator[Frame, None, None]:
        seq, last, interval = 0, time.time(), None
        lost_since: float | None = None
        feed = self._feed
        assert feed is not None  # opened before the producer runs
        while not stop.is_set():
            try:
                got = feed.read()  # (image, capture time), or an image stamped now (e.g. IgtlSource's feed)
                image, now = got if isinstance(got, tuple) else (got, time.time())
            except BadMessage as exc:  # the frame guard refused it: counted, the feed goes on
                self.count_bad(exc)
                continue
            except _FeedLost as exc:
                if stop.is_set():  # closing, not a lost feed
                    return
                log.warning("%s: feed lost (%s); reconnecting", self.name, exc)
                feed.close()
                self._feed = None
                lost_since = lost_since or last
                self.reconnecting = True
                self._feed = new = self._connect(self._max_reconnects, stop)
                if new is None:
                    return
                feed = new
                continue
            now = max(now, last)  # capture times never go back
            if lost_since is not None:  # recovered: counted once, however many connections it took
                seq += self._report_gap(now - lost_since, interval, feed.rate)
                lost_since = None
                self.counters["reconnects"] += 1
                self.reconnecting = False
            elif seq:
                step = now - last
                interval = step if interval is None else 0.9 * interval + 0.1 * step
            yield self._frame(seq, image, now)
            seq, last = seq + 1, now

    def _report_gap(self, gap: float, interval: float | None, stated: float | None) -> int:
        """Count and log a gap of ``gap`` seconds (``stated``: the feed's own frame rate, if it
        has one); returns the estimated frames missed."""
        rate = stated or (1.0 / interval if interval else FALLBACK_RATE)
        missed = max(0, round(gap * rate) - 1)
        self.counters["gaps"] += 1
        self.counters["gap_frames"] += missed
        log.warning("%s: feed back after a %.2f s gap (about %d frames missed)", self.name, gap, missed)
        return missed

    def _close(self) -> None:
        if self._feed is not None:
            self._feed.close()
            self._feed = None
