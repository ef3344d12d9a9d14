"""Recorded video files (mp4, avi, mov, mpeg, gif) through PyAV: a paced replay source for the
streaming runtime, and ``read_video``, a synchronous whole-file reader for training code.

Gray output reads the decoder's luma plane directly (no colour conversion) and expands
limited-range ("TV", 16-235) luma to full range, so gray values match ``to_ndarray("gray")``.

A file is rejected with a one-line SourceError when it is missing, not a video, or cannot be
opened (for example an mp4 cut before its index). Corruption found while decoding (the decoder
runs with ``err_detect=explode``), a file that ends well before the frame count its header
announces, and a gif without its trailer byte raise SourceError once the good frames have been
delivered.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from core.errors import SourceError
from core.resample import FrameGrid

from .base import PacedSource, derive_name
from .guard import DEFAULT_MAX_FRAME_BYTES, BadCounter, BadMessage
from .image import OutputFormat, normalise_size
from .options import typed

log = logging.getLogger(__name__)

VIDEO_KINDS = "mp4, avi, mov, mpeg, gif"
FALLBACK_RATE = 30.0  # frames per second assumed for a file that states no frame rate
TRUNCATED_BELOW = 0.8  # a file ending before this share of its announced frames is truncated

# 8-bit formats whose first plane is the luma (Y) plane, one byte per pixel.
_LUMA_FIRST = frozenset(
    "gray yuv420p yuvj420p yuv422p yuvj422p yuv444p yuvj444p yuv440p yuvj440p yuv411p yuv410p nv12 nv21".split()
)
_LIMITED_TO_FULL = np.clip(np.rint((np.arange(256) - 16) * 255.0 / 219.0), 0, 255).astype(np.uint8)


def check_crop(crop: Sequence[int] | None) -> tuple[int, int, int, int] | None:
    """``crop`` as (x, y, w, h) of non-negative ints with w, h > 0; SourceError otherwise."""
    if crop is None:
        return None
    box = tuple(crop)
    if (
        len(box) != 4
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in box)
        or 0 in box[2:]
    ):
        raise SourceError(f"crop must be (x, y, width, height) in source pixels with width, height > 0, got {crop!r}")
    return tuple(int(v) for v in box)  # type: ignore[return-value]


def ffmpeg_reason(exc: BaseException) -> str:
    """FFmpeg's own words for an error, without the file name PyAV appends."""
    return str(getattr(exc, "strerror", None) or exc)


@dataclass(frozen=True)
class FrameConverter:
    """Turns a decoded PyAV frame into the uint8 array a source hands out.

    Args:
        output: gray or RGB, and the output size.
        crop: (x, y, w, h) in source pixels, applied before resizing; None for the whole frame.
    """

    output: OutputFormat
    crop: tuple[int, int, int, int] | None = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self.output.gray and frame.format.name in _LUMA_FIRST:
            plane = frame.planes[0]
            luma = np.frombuffer(memoryview(plane), np.uint8).reshape(frame.height, plane.line_size)[:, : frame.width]
            image = self.output.apply(self._cropped(luma))
            limited = not (frame.format.name.startswith(("yuvj", "gray")) or frame.color_range == 2)
            if limited:
                return cv2.LUT(image, _LIMITED_TO_FULL)
            # Never hand out a view of the decoder's buffer: it would keep the whole frame alive.
            return image.copy() if np.may_share_memory(image, luma) else image
        source = frame.to_ndarray(format="gray" if self.output.gray else "rgb24")
        return self.output.apply(self._cropped(source))

    def _cropped(self, image: np.ndarray) -> np.ndarray:
        if self.crop is None:
            return image
        x, y, w, h = self.crop
        if x + w > image.shape[1] or y + h > image.shape[0]:
            raise SourceError(
                f"crop {self.crop} does not fit in {image.shape[1]}x{image.shape[0]} frames; "
                "give (x, y, width, height) inside the frame"
            )
        return image[y : y + h, x : x + w]


class VideoFile:
    """One opened video file; ``frames()`` decodes it once.

    Args:
        path: the file.
        threads: let FFmpeg decode with frame and slice threads (faster; a few frames of delay,
            which a file does not mind).
    """

    def __init__(self, path: str | Path, *, threads: bool = True) -> None:
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise SourceError(f"video file not found: {self.path}; check the path")
        if not self.path.is_file():
            raise SourceError(f"{self.path} is not a file; give the path of a video file ({VIDEO_KINDS})")
        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(
                f"cannot read video {self.path}: {ffmpeg_reason(exc)}; "
                f"the file is corrupt, truncated or not a video ({VIDEO_KINDS})"
            ) from None
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"{self.path} holds no video stream; give a video file ({VIDEO_KINDS})")
        if self._container.format.name == "gif" and not self._has_gif_trailer():
            self._container.close()
            raise SourceError(f"gif {self.path} is truncated (no trailer byte); re-export or re-download it")
        self._stream = self._container.streams.video[0]
        width, height = self._stream.codec_context.width or 0, self._stream.codec_context.height or 0
        if width * height > DEFAULT_MAX_FRAME_BYTES:  # declared size first: no decompression bomb
            self._container.close()
            raise SourceError(
                f"video {self.path} declares {width}x{height} frames, over {DEFAULT_MAX_FRAME_BYTES} pixels; "
                "refused before decoding (re-encode it smaller)"
            )
        self._stream.thread_type = "AUTO" if threads else "SLICE"
        self._stream.codec_context.options = {"err_detect": "explode"}
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.rate = float(rate) if rate else FALLBACK_RATE

    def _has_gif_trailer(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, 2)
            return f.read(1) == b";"

    def frames(self) -> Iterator[tuple[float, av.VideoFrame]]:
        """(seconds since the first frame, frame) in presentation order; the times never decrease.

        Raises SourceError after the good frames when the rest of the file is corrupt or
        missing.
        """
        count, first, last = 0, None, 0.0
        try:
            for frame in self._container.decode(self._stream):
                t = frame.time if frame.time is not None else count / self.rate
                first = t if first is None else first
                last = max(last, t - first)
                yield last, frame
                count += 1
        except av.FFmpegError as exc:
            raise SourceError(
                f"video {self.path} is corrupt or truncated after frame {count}: {ffmpeg_reason(exc)}"
            ) from None
        announced = self._stream.frames
        if count == 0:
            raise SourceError(f"video {self.path} holds no decodable frames; the file is corrupt")
        if announced and count < TRUNCATED_BELOW * announced:
            raise SourceError(
                f"video {self.path} ends after {count} of the {announced} frames its header announces; "
                "the file is truncated"
            )

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def resample(
    decoded: Iterator[tuple[float, av.VideoFrame]], *, fps: float, upsample: bool = False
) -> Iterator[tuple[float, av.VideoFrame]]:
    """Pick frames for a constant ``fps`` by timestamp (:class:`core.resample.FrameGrid`, the rule
    ``das-stream run`` applies to a live stream): each grid time j / fps goes to the nearest frame.

    A frame nearest to several grid times (a source slower than ``fps``) is yielded once, as the
    runtime shows it, or once per grid time with ``upsample=True``.
    """
    grid = FrameGrid(fps)
    for t, frame in decoded:
        n = grid.count(t)
        for _ in range(n if upsample else min(n, 1)):
            yield t, frame


def read_video(
    path: str | Path,
    *,
    gray: bool = True,
    size: int | tuple[int, int] | None = None,
    fps: float | None = None,
    crop: Sequence[int] | None = None,
    max_frames: int | None = None,
    upsample: bool = False,
) -> tuple[np.ndarray, float]:
    """Read a whole video file into memory (synchronous; for training and offline tools).

    Args:
        path: the video file (mp4, avi, mov, mpeg, gif).
        gray: (N, H, W) when True, (N, H, W, 3) RGB when False.
        size: output size, an int for a square or (width, height); None keeps the source size.
        fps: resample to this rate by picking the frame nearest each output time; None keeps
            every decoded frame.
        crop: (x, y, width, height) in source pixels, applied before resizing.
        max_frames: stop after this many output frames.
        upsample: repeat frames to fill ``fps`` when the video is slower (never by default: the
            runtime does not repeat frames either).

    Returns:
        (frames uint8, the file's own frame rate).

    Raises:
        SourceError: missing, unreadable, corrupt or truncated file, or bad arguments.
    """
    if fps is not None and not fps > 0:
        raise SourceError(f"fps must be > 0 to resample, or None to keep every frame; got {fps!r}")
    if max_frames is not None and max_frames < 1:
        raise SourceError(f"max_frames must be >= 1 or None, got {max_frames!r}")
    convert = FrameConverter(OutputFormat(gray=gray, size=normalise_size(size)), check_crop(crop))
    with VideoFile(path) as video:
        decoded = video.frames()
        if fps is not None:
            decoded = resample(decoded, fps=fps, upsample=upsample)
        images: list[np.ndarray] = []
        previous: tuple[av.VideoFrame, np.ndarray] | None = None
        for _, frame in itertools.islice(decoded, max_frames):
            if previous is None or previous[0] is not frame:  # resampling repeats frames
                previous = (frame, convert(frame))
            images.append(previous[1])
        return np.stack(images), video.rate


class VideoSource(PacedSource):
    """Replays a video file as if it were live.

    Frame i is released at ``t0 + pts_i / speed`` (``t0``: when the first frame was released),
    so pacing never drifts; ``t_capture`` is the release time. With ``loop`` the file restarts
    when it ends and ``seq`` keeps increasing; without it the iteration ends cleanly.

    Args:
        path: the video file (mp4, avi, mov, mpeg, gif).
        name: stream id; default: the file stem.
        speed: playback speed factor (2.0 = twice real time).
        pacing: False releases frames as fast as they decode.
        loop: replay forever.
        gray: (H, W) frames when True, (H, W, 3) RGB when False.
        size: output size, int (square) or (width, height); None keeps the source size.

    Attributes:
        rate: the file's frame rate (known once the source is open).
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
        super().__init__(name=name or derive_name(self.path.stem), pacing=pacing, speed=speed)
        self._loop_forever = loop
        self._convert = FrameConverter(OutputFormat(gray=gray, size=normalise_size(size)))
        self.rate = FALLBACK_RATE
        self._count_bad = BadCounter(self.name, self.counters, log, "video frame")
        self._video: VideoFile | None = None
        self._decoded: Iterator[tuple[float, av.VideoFrame]] | None = None
        self._first: tuple[float, av.VideoFrame] | None = None

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
    ) -> VideoSource:
        """``video:PATH`` (no options; speed, pacing and loop are keyword arguments)."""
        path = spec.partition(":")[2]
        if not path:
            raise SourceError(f"source spec {spec!r} needs a path: video:PATH")
        typed(spec, options, {})
        return cls(path, name=name, speed=speed, pacing=pacing, loop=loop, gray=gray, size=size)

    def _open(self) -> None:
        # Open and decode the first frame now, so a bad file fails at 'async with'.
        video = VideoFile(self.path)
        decoded = video.frames()
        try:
            self._first = next(decoded)
        except BaseException:
            video.close()
            raise
        self._video, self._decoded, self.rate = video, decoded, video.rate

    def _produce(self, stop: threading.Event) -> Generator[tuple[int, float, np.ndarray], None, None]:
        seq, offset = 0, 0.0
        first, rest = self._first, self._decoded
        assert first is not None and rest is not None  # opened before the producer runs
        decoded: Iterator[tuple[float, av.VideoFrame]] = itertools.chain([first], rest)
        self._first = None
        while True:
            t = 0.0
            for t, frame in decoded:
                if stop.is_set():
                    return
                try:
                    yield seq, offset + t, self._convert(frame)
                except BadMessage as exc:  # the frame guard refused it: counted, the file plays on
                    self._count_bad(exc)
                seq += 1
            if not self._loop_forever:
                return
            offset += t + 1.0 / self.rate
            if self._video is not None:
                self._video.close()
            self._video = video = VideoFile(self.path)
            decoded = video.frames()

    def _close(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None
