"""Source specs: every form, options, default names, and the errors."""

from __future__ import annotations

import pytest
from sources_help import index_of

from core.errors import SourceError
from sources.probe import ProbeSource
from sources.spec import SPEC_FORMS, parse_source
from sources.synthetic import SyntheticSource
from sources.video import VideoSource
from sources.zmq_source import ZmqSource


async def test_video_spec_replays_the_file(make_video):
    path = make_video("mp4", frames=6, name="lung scan")
    source = parse_source(f"video:{path}", pacing=False, gray=False)
    assert isinstance(source, VideoSource) and source.name == "lung_scan"
    async with source:
        frames = [f async for f in source]
    assert [index_of(f.image.mean(axis=2)) for f in frames] == list(range(6))
    assert frames[0].image.shape == (48, 64, 3)


@pytest.mark.parametrize(
    ("spec", "name", "device"),
    [
        ("probe:0", "probe0", 0),
        ("probe:/dev/video2", "probe2", "/dev/video2"),
        ("probe:udp://127.0.0.1:5000", "probe-5000", "udp://127.0.0.1:5000"),
    ],
)
def test_probe_specs(spec, name, device):
    source = parse_source(spec, timeout="2.5", max_reconnects="none")
    assert isinstance(source, ProbeSource) and source.name == name and source.device == device


def test_zmq_specs_with_query_options_and_keywords():
    sub = parse_source("zmq+sub://10.0.0.5:5555?topic=cam&max_frame_bytes=1000000")
    assert isinstance(sub, ZmqSource) and sub.name == "zmq-5555"
    assert (sub.url, sub.pattern, sub.bind, sub.topic) == ("tcp://10.0.0.5:5555", "sub", False, b"cam")
    pull = parse_source("zmq+pull://*:5556?bind=1", allowed_dtypes="uint8,uint16", name="cart-1")
    assert (pull.url, pull.pattern, pull.bind, pull.name) == ("tcp://*:5556", "pull", True, "cart-1")
    assert parse_source("zmq+pull://127.0.0.1:5557", bind=True).bind is True


async def test_synthetic_spec_options():
    source = parse_source("synthetic:?fps=50&label=b_lines&seed=3&frames=4&size=40", pacing=False)
    assert isinstance(source, SyntheticSource) and source.name == "synthetic"
    assert source.label_of(0) == "b_lines"
    async with source:
        frames = [f async for f in source]
    assert [f.image.shape for f in frames] == [(40, 40)] * 4
    assert parse_source("synthetic:", label=1).label_of(0) == "b_lines"


@pytest.mark.parametrize(
    ("spec", "kwargs", "match"),
    [
        ("webcam:0", {}, "unknown source spec 'webcam:0'; valid forms: video:PATH"),
        ("clip.mp4", {}, "has no scheme"),
        ("video:", {}, "needs a path"),
        ("probe:", {}, "needs a device"),
        ("video:x.mp4", {"bind": True}, "unknown option 'bind'"),
        ("zmq+sub://127.0.0.1:5555?colour=1", {}, "unknown option 'colour'.*valid options: bind, topic"),
        ("zmq+sub://127.0.0.1:5555?bind=maybe", {}, "bad value 'maybe' for option 'bind'"),
        ("zmq+sub://127.0.0.1:5555?bind=1", {"bind": False}, "given twice"),
        ("zmq+sub://127.0.0.1", {}, "tcp://HOST:PORT"),
        ("probe:0", {"loop": True}, "replayed sources"),
        ("zmq+pull://127.0.0.1:5555", {"pacing": False}, "replayed sources"),
        ("probe:0", {"speed": 2.0}, "replayed sources"),
        ("synthetic:", {"loop": True}, "loop applies to video"),
        ("synthetic:?fps=fast", {}, "bad value 'fast' for option 'fps'"),
        ("synthetic:?label=pneumothorax", {}, "unknown synthetic class"),
        ("synthetic:", {"name": "a b"}, "stream name 'a b' is not usable"),
        ("video:x.mp4", {"size": (0, 3)}, "size must be"),
    ],
)
def test_spec_errors_are_one_line_and_name_the_fix(spec, kwargs, match):
    with pytest.raises(SourceError, match=match) as exc:
        parse_source(spec, **kwargs)
    assert "\n" not in str(exc.value)


def test_valid_forms_are_listed():
    for form in (
        "video:PATH",
        "probe:/dev/videoN",
        "probe:URL",
        "zmq+sub://HOST:PORT",
        "zmq+pull://HOST:PORT",
        "synthetic:",
    ):
        assert form in SPEC_FORMS


async def test_synthetic_spec_size_overrides_the_callers_default():
    async with parse_source("synthetic:?size=48&frames=1", size=224, pacing=False) as src:
        frames = [f async for f in src]
    assert [f.image.shape for f in frames] == [(48, 48)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("igtl://127.0.0.1:18944?timeout=inf", r"timeout must be a number > 0 and at most 31536000 \(s\), got inf"),
        ("igtl://127.0.0.1:18944?reconnect_initial=5&reconnect_max=1", r"reconnect_initial 5.0 s is over"),
        ("zmq+pull://127.0.0.1:5555?rcvhwm=99999999999", r"rcvhwm must be an integer from 1 to 100000"),
        ("zmq+sub://127.0.0.1:5555?max_clock_skew=nan", r"max_clock_skew must be a number > 0"),
        ("zmq+pull://127.0.0.1:5555?queue_size=0", r"queue_size must be an integer from 1 to 100000"),
    ],
)
def test_numbers_of_live_sources_are_bounded_with_one_line(spec, message):
    with pytest.raises(SourceError, match=message) as info:
        parse_source(spec)
    assert "\n" not in str(info.value)
    with pytest.raises(SourceError, match=r"open_attempts must be an integer from 1"):
        parse_source("probe:0", open_attempts=10**12)
