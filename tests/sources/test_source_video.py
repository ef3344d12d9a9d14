"""Video files: replay (paced, unpaced, looped), gray/colour/size, containers, read_video,
and the one-line SourceError for missing, foreign, truncated and corrupt files."""

from __future__ import annotations

import numpy as np
import pytest
from sources_help import HEIGHT, WIDTH, collect, index_of, level

from core.errors import SourceError
from sources.base import Pacer
from sources.video import VideoSource, read_video


@pytest.mark.parametrize("kind", ["mp4", "avi", "mov", "mpeg", "gif"])
async def test_replays_every_frame_of_each_container_in_order(make_video, kind):
    path = make_video(kind, frames=20, name=f"clip-{kind}")
    frames = await collect(VideoSource(path, pacing=False))
    assert [f.seq for f in frames] == list(range(20))
    assert [index_of(f.image) for f in frames] == list(range(20))
    assert all(f.stream == f"clip-{kind}" for f in frames)
    assert all(f.image.shape == (HEIGHT, WIDTH) and f.image.dtype == np.uint8 for f in frames)
    assert all(a.t_capture <= b.t_capture for a, b in zip(frames, frames[1:]))


async def test_gray_is_full_range_luma(make_video):
    # mp4/h264 stores limited-range luma (16-235); the source expands it back to 0-255.
    frames = await collect(VideoSource(make_video("mp4", frames=3), pacing=False))
    corner = frames[2].image[HEIGHT // 2 :, WIDTH // 2 :]
    assert abs(float(corner.mean()) - level(2)) < 2


async def test_colour_frames_are_rgb(make_video):
    frames = await collect(VideoSource(make_video("mov", frames=3), pacing=False, gray=False))
    image = frames[0].image
    assert image.shape == (HEIGHT, WIDTH, 3)
    red = image[2 : HEIGHT // 4 - 2, 2 : WIDTH // 4 - 2].reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


@pytest.mark.parametrize(("size", "shape"), [(16, (16, 16)), ((32, 24), (24, 32))])
async def test_resizes_at_decode(make_video, size, shape):
    frames = await collect(VideoSource(make_video("avi", frames=4), pacing=False, size=size))
    assert [f.image.shape for f in frames] == [shape] * 4
    assert [index_of(np.kron(f.image, np.ones((4, 4), np.uint8))) for f in frames[:1]] == [0]


async def test_loop_restarts_the_file_and_keeps_seq_increasing(make_video):
    frames = await collect(VideoSource(make_video("mp4", frames=10), pacing=False, loop=True), limit=25)
    assert [f.seq for f in frames] == list(range(25))
    assert [index_of(f.image) for f in frames] == [i % 10 for i in range(25)]


async def test_without_loop_the_iteration_ends_cleanly(make_video):
    source = VideoSource(make_video("mpeg", frames=5), pacing=False)
    assert len(await collect(source)) == 5
    assert len(await collect(source)) == 5  # a closed source can be opened again


async def test_pacing_never_releases_a_frame_before_its_timestamp(make_video):
    # 20 frames at 25 fps played at 4x: frame i is due i / 25 / 4 s after the first.
    frames = await collect(VideoSource(make_video("mp4", frames=20, fps=25), speed=4.0))
    assert [index_of(f.image) for f in frames] == list(range(20))
    elapsed = [f.t_capture - frames[0].t_capture for f in frames]
    assert all(e >= i / 25 / 4 - 0.002 for i, e in enumerate(elapsed))
    assert elapsed == sorted(elapsed)


def test_pacer_release_times_follow_the_timestamps_without_drift():
    pacer = Pacer(speed=2.0)
    stamps = [0.5 + i / 30 for i in range(100)]
    due = [pacer.due(t) for t in stamps]
    assert due == sorted(due)
    assert due[-1] - due[0] == pytest.approx((stamps[-1] - stamps[0]) / 2.0, abs=1e-9)
    assert due[50] - due[0] == pytest.approx(50 / 30 / 2.0, abs=1e-9)


def test_pacer_rejects_bad_speed():
    for speed in (0, -1.0, float("nan")):
        with pytest.raises(SourceError, match="speed"):
            Pacer(speed=speed)


def test_read_video_returns_all_frames_and_the_rate(make_video):
    frames, rate = read_video(make_video("avi", frames=12, fps=20))
    assert frames.shape == (12, HEIGHT, WIDTH) and frames.dtype == np.uint8
    assert rate == 20.0
    assert [index_of(f) for f in frames] == list(range(12))


async def test_read_video_and_the_replay_decode_identically(make_video):
    path = make_video("mp4", frames=8)
    frames, _ = read_video(path, size=(40, 30))
    replay = await collect(VideoSource(path, pacing=False, size=(40, 30)))
    assert all(np.array_equal(a, b.image) for a, b in zip(frames, replay, strict=True))


def test_read_video_resamples_by_timestamp(make_video):
    path = make_video("mp4", frames=20, fps=25)  # frames at 0, 0.04, ... 0.76 s
    down, _ = read_video(path, fps=7)  # 0, 1/7, ... up to the end of the last frame (0.78 s)
    nearest = [min(range(20), key=lambda i: abs(i / 25 - j / 7)) for j in range(6)]
    assert [index_of(f) for f in down] == nearest == [0, 4, 7, 11, 14, 18]
    nearest = [min(range(20), key=lambda i: abs(i / 25 - j / 33)) for j in range(26)]
    assert len(set(nearest)) == 20  # no target falls halfway between two frames
    up, _ = read_video(path, fps=33, upsample=True)  # asked: some frames twice
    assert [index_of(f) for f in up] == nearest
    same, _ = read_video(path, fps=33)  # by default a slower video keeps each frame once, as `run` shows it
    assert [index_of(f) for f in same] == list(range(20))


def test_read_video_crop_size_colour_and_max_frames(make_video):
    path = make_video("mov", frames=10)
    frames, _ = read_video(path, gray=False, crop=(0, 0, WIDTH // 4, HEIGHT // 4), size=8, max_frames=3)
    assert frames.shape == (3, 8, 8, 3)
    assert (frames[..., 0] > 200).all() and (frames[..., 1] < 60).all()  # only the red block is left


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fps": 0}, "fps"),
        ({"max_frames": 0}, "max_frames"),
        ({"crop": (0, 0, 10)}, "crop"),
        ({"crop": (60, 0, 10, 10)}, "does not fit"),
        ({"size": (0, 4)}, "size"),
    ],
)
def test_read_video_rejects_bad_arguments(make_video, kwargs, match):
    with pytest.raises(SourceError, match=match):
        read_video(make_video("mp4", frames=3), **kwargs)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


async def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SourceError, match="not found") as exc:
        await collect(VideoSource(tmp_path / "nope.mp4"))
    _one_line(exc)
    with pytest.raises(SourceError, match="not a file"):
        read_video(tmp_path)


async def test_file_that_is_not_a_video_fails_on_open(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(SourceError, match="corrupt, truncated or not a video") as exc:
        async with VideoSource(path):
            pass
    assert str(path) in _one_line(exc)


async def test_mp4_cut_before_its_index_fails_on_open(make_video, tmp_path):
    data = make_video("mp4", frames=20).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="cannot read video"):
        async with VideoSource(cut):
            pass


@pytest.mark.parametrize(("kind", "keep"), [("avi", 0.8), ("mpeg", 0.5)])
async def test_truncated_file_yields_the_good_frames_then_fails(make_video, tmp_path, kind, keep):
    data = make_video(kind, frames=24).read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(data[: int(len(data) * keep)])
    frames = []
    with pytest.raises(SourceError, match="truncated") as exc:
        async with VideoSource(cut, pacing=False) as source:
            async for frame in source:
                frames.append(frame)
    _one_line(exc)
    assert 0 < len(frames) < 24
    assert [index_of(f.image) for f in frames] == list(range(len(frames)))


async def test_corrupted_middle_yields_the_good_frames_then_fails(make_video, tmp_path):
    data = bytearray(make_video("mpeg", frames=24).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 1500] = np.random.default_rng(1).bytes(1500)
    bad = tmp_path / "bad.mpeg"
    bad.write_bytes(bytes(data))
    frames = []
    with pytest.raises(SourceError, match="corrupt"):
        async with VideoSource(bad, pacing=False) as source:
            async for frame in source:
                frames.append(frame)
    assert 0 < len(frames) < 24


def test_truncated_gif_is_rejected(make_video, tmp_path):
    data = make_video("gif", frames=10).read_bytes()
    cut = tmp_path / "cut.gif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="truncated"):
        read_video(cut)


async def test_source_must_be_entered_before_iterating(make_video):
    source = VideoSource(make_video("mp4", frames=2))
    with pytest.raises(SourceError, match="async with"):
        await source.__anext__()
    async with source:
        with pytest.raises(SourceError, match="already open"):
            await source.__aenter__()
