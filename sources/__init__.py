"""Frame sources of the streaming runtime: each is an async context manager and an async
iterator of ``Frame`` (see docs/sources.md).

    async with parse_source("video:clip.mp4", loop=True) as source:
        async for frame in source:
            ...
"""

from core.errors import SourceError

from .dicom import DicomSource
from .frame import Frame
from .guard import BadMessage
from .igtl import IgtlSource
from .probe import ProbeSource
from .spec import SPEC_FORMS, parse_source
from .synthetic import CLASSES, SyntheticSource, make_clip, render_clip
from .video import VideoSource, read_video
from .wire import FrameSender, decode_message, encode_array, encode_jpg
from .zmq_source import ZmqSource

__all__ = [
    "CLASSES",
    "SPEC_FORMS",
    "BadMessage",
    "DicomSource",
    "Frame",
    "FrameSender",
    "IgtlSource",
    "ProbeSource",
    "SourceError",
    "SyntheticSource",
    "VideoSource",
    "ZmqSource",
    "decode_message",
    "encode_array",
    "encode_jpg",
    "make_clip",
    "parse_source",
    "read_video",
    "render_clip",
]
