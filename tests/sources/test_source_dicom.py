"""DICOM cine replay: real multi-frame files written with pydicom in several photometric
interpretations and transfer syntaxes, frame rates from each rate tag, folders ordered by
series and Instance Number, and the one-line SourceError for each kind of bad file."""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest
from dicom_help import frames_rgb, gray_of, write_cine, write_mpeg4_cine
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
    SMPTEST211020UncompressedProgressiveActiveVideo,
)
from sources_help import collect

from core.errors import SourceError
from sources.dicom import DicomSource
from sources.spec import parse_source

# (photometric, syntax, largest gray error, largest RGB error): lossless storage gives the exact
# luma (YBR) or OpenCV's conversion within rounding; JPEG and 4:2:2 chroma lose a little.
CASES = [
    ("MONOCHROME2", ExplicitVRLittleEndian, 0, 0),
    ("MONOCHROME2", RLELossless, 0, 0),
    ("MONOCHROME1", ExplicitVRLittleEndian, 0, 0),
    ("RGB", ExplicitVRLittleEndian, 0, 0),
    ("RGB", RLELossless, 0, 0),
    ("YBR_FULL", ExplicitVRLittleEndian, 1, 2),
    ("YBR_FULL", RLELossless, 1, 2),
    ("YBR_FULL_422", ExplicitVRLittleEndian, 1, 16),
    ("YBR_FULL_422", JPEGBaseline8Bit, 4, 18),
    ("MONOCHROME2", JPEGBaseline8Bit, 4, 4),
    ("MONOCHROME2", JPEG2000Lossless, 0, 0),
    ("RGB", JPEG2000Lossless, 0, 0),
]


@pytest.mark.parametrize(("photometric", "syntax", "gray_error", "rgb_error"), CASES)
async def test_every_frame_matches_opencv(tmp_path, photometric, syntax, gray_error, rgb_error):
    rgb = frames_rgb(5)
    path = write_cine(tmp_path / "loop.dcm", rgb, photometric=photometric, syntax=syntax)
    gray = await collect(DicomSource(path, pacing=False))
    colour = await collect(DicomSource(path, pacing=False, gray=False))
    assert [f.seq for f in gray] == list(range(5)) and all(f.stream == "loop" for f in gray)
    got = np.stack([f.image for f in gray]).astype(int)
    assert got.shape == (5, 16, 24)
    assert np.abs(got - gray_of(rgb)).max() <= gray_error
    expected_rgb = (
        rgb if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") else np.repeat(gray_of(rgb)[..., None], 3, -1)
    )
    got_rgb = np.stack([f.image for f in colour]).astype(int)
    assert got_rgb.shape == (5, 16, 24, 3)
    assert np.abs(got_rgb - expected_rgb).max() <= rgb_error


@pytest.mark.parametrize("gray", [True, False])
async def test_mpeg4_cine_loop_decodes_through_pyav(tmp_path, gray):
    # H.264 at CRF 10 with 4:2:0 chroma: close to the source, not exact
    rgb = frames_rgb(12)
    path = write_mpeg4_cine(tmp_path / "mp4loop.dcm", rgb, tags={"CineRate": 25})
    source = DicomSource(path, pacing=False, gray=gray)
    frames = await collect(source)
    assert source.files[0].video_format == "h264" and source.rate == 25.0
    assert [f.seq for f in frames] == list(range(12))
    got = np.stack([f.image for f in frames]).astype(int)
    expected = gray_of(rgb) if gray else rgb
    assert got.shape == expected.shape
    assert np.abs(got - expected).mean() < (2 if gray else 4)
    # frames come in order: each is nearest to its own source frame (they differ by 8 levels)
    distance = np.abs(got[:, None] - expected[None].astype(int)).reshape(12, 12, -1).mean(axis=2)
    assert list(distance.argmin(axis=1)) == list(range(12))


async def test_truncated_mpeg4_stream_delivers_good_frames_then_fails(tmp_path):
    path = write_mpeg4_cine(tmp_path / "cut.dcm", frames_rgb(12), cut=400)  # the last 2-3 of 12 frames
    frames = []
    with pytest.raises(SourceError, match=r"cut.dcm.*(truncated|corrupt)"):
        async with DicomSource(path, pacing=False) as source:
            async for frame in source:
                frames.append(frame)
    assert 1 <= len(frames) < 12


async def test_resizes_when_decoding(tmp_path):
    path = write_cine(tmp_path / "loop.dcm", frames_rgb(3), photometric="RGB", syntax=RLELossless)
    frames = await collect(DicomSource(path, pacing=False, size=(12, 8)))
    assert [f.image.shape for f in frames] == [(8, 12)] * 3


@pytest.mark.parametrize(
    ("tags", "rate", "tag"),
    [
        ({"FrameTime": "40", "CineRate": 20, "RecommendedDisplayFrameRate": 50}, 25.0, "FrameTime"),
        ({"CineRate": 20, "RecommendedDisplayFrameRate": 50}, 20.0, "CineRate"),
        ({"RecommendedDisplayFrameRate": 50}, 50.0, "RecommendedDisplayFrameRate"),
        ({}, 30.0, "default"),
    ],
)
async def test_frame_rate_tags_in_order(tmp_path, tags, rate, tag):
    path = write_cine(tmp_path / "loop.dcm", frames_rgb(2), tags=tags)
    source = DicomSource(path, pacing=False)
    await collect(source)
    assert source.rate == rate and source.files[0].rate_tag == tag


async def test_paced_replay_follows_frame_time(tmp_path):
    # Frame Time 50 ms at speed 2: frame i is due 25 ms * i after the first. Releases are never
    # early (so those bounds are exact); the upper bound on the span allows a busy machine.
    path = write_cine(tmp_path / "loop.dcm", frames_rgb(6), tags={"FrameTime": "50", "CineRate": 5})
    frames = await collect(DicomSource(path, speed=2.0))
    since_first = np.array([f.t_capture - frames[0].t_capture for f in frames])
    assert np.all(since_first >= 0.025 * np.arange(6) - 2e-3)
    assert since_first[-1] < 0.6


async def test_loop_replays_again_with_seq_increasing(tmp_path):
    rgb = frames_rgb(4)
    path = write_cine(tmp_path / "loop.dcm", rgb, photometric="RGB")
    frames = await collect(DicomSource(path, pacing=False, loop=True), limit=10)
    assert [f.seq for f in frames] == list(range(10))
    expected = gray_of(rgb)
    assert all(np.array_equal(f.image, expected[i % 4]) for i, f in enumerate(frames))


async def test_folder_plays_series_then_instance_number_and_skips_non_cine_files(tmp_path):
    folder = tmp_path / "exam"
    clips = {name: frames_rgb(3, seed=seed) for seed, name in enumerate("abcd")}
    # file names sort a, b, c, d; the play order is series 1 (instances 1, 2, 3) then series 2
    write_cine(folder / "a.dcm", clips["a"], tags={"SeriesNumber": 1, "InstanceNumber": 3, "CineRate": 10})
    write_cine(folder / "b.dcm", clips["b"], tags={"SeriesNumber": 2, "InstanceNumber": 1, "CineRate": 10})
    write_cine(
        folder / "sub" / "c.dcm",
        clips["c"],
        photometric="RGB",
        syntax=RLELossless,
        tags={"SeriesNumber": 1, "InstanceNumber": 1, "FrameTime": "50"},
    )
    write_cine(folder / "d.dcm", clips["d"], tags={"SeriesNumber": 1, "InstanceNumber": 2, "CineRate": 10})
    write_cine(folder / "still.dcm", frames_rgb(1), tags={"SeriesNumber": 1, "InstanceNumber": 0})
    (folder / "notes.txt").write_text("not an image")
    source = DicomSource(folder, pacing=False)
    frames = await collect(source)
    order = ["c", "d", "a", "b"]
    assert [c.path.name for c in source.files] == [f"{n}.dcm" for n in order]
    expected = np.concatenate([gray_of(clips[n]) for n in order])
    assert len(frames) == 12 and [f.seq for f in frames] == list(range(12))
    assert all(np.array_equal(f.image, e) for f, e in zip(frames, expected))
    assert source.counters == {"skipped_files": 2, "corrupt_files": 0, "bad_messages": 0, "files_played": 4}
    assert source.name == "exam"
    assert [c.rate for c in source.files] == [20.0, 10.0, 10.0, 10.0]
    # each file is its own segment, named by its path in the folder and its SOP Instance UID
    names = [f.segment.name for f in frames]
    assert names == [n for n in ("sub/c.dcm", "d.dcm", "a.dcm", "b.dcm") for _ in range(3)]
    uids = [str(pydicom.dcmread(folder / n).SOPInstanceUID) for n in ("sub/c.dcm", "d.dcm", "a.dcm", "b.dcm")]
    assert [f.segment.instance for f in frames[::3]] == uids


async def test_spec_and_options(tmp_path):
    path = write_cine(tmp_path / "scan 1.dcm", frames_rgb(2))
    source = parse_source(f"dicom:{path}", speed=3.0, loop=True, size=8)
    assert isinstance(source, DicomSource) and source.name == "scan_1" and source.path == path
    frames = await collect(parse_source(f"dicom:{path}", pacing=False, size=8))
    assert [f.image.shape for f in frames] == [(8, 8)] * 2
    with pytest.raises(SourceError, match="needs a path: dicom:FILE or dicom:FOLDER"):
        parse_source("dicom:")
    with pytest.raises(SourceError, match="unknown option 'fps'"):
        parse_source(f"dicom:{path}", fps=3)


def _no_pixels(path):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: p.with_suffix(".dcm").write_bytes(b"\x00" * 300) and p.with_suffix(".dcm"),
            r"is not a DICOM file .*give a DICOM Part 10 file",
        ),
        (lambda p: _no_pixels(p), r"holds no pixel data \(Basic Text SR Storage\); give a multi-frame image"),
        (
            lambda p: write_cine(p, frames_rgb(1)),
            r"is a single-frame image; dicom: replays cine loops, give a multi-frame",
        ),
        (
            lambda p: write_cine(p, frames_rgb(2), syntax=JPEGLosslessSV1),
            r"JPEG Lossless.*which no installed handler decodes; install .*pylibjpeg.*or transcode",
        ),
        (
            lambda p: write_cine(p, frames_rgb(2), syntax=SMPTEST211020UncompressedProgressiveActiveVideo),
            r"SMPTE ST 2110-20 Uncompressed Progressive.*which pydicom cannot decode; transcode it",
        ),
        (
            lambda p: write_cine(p, frames_rgb(2), tags={"PhotometricInterpretation": "PALETTE COLOR"}),
            r"photometric interpretation 'PALETTE COLOR'; supported: MONOCHROME2, .*re-export",
        ),
        (
            lambda p: write_cine(p, frames_rgb(2), tags={"BitsAllocated": 16}),
            r"stores 16-bit samples; .*re-export as 8 bit",
        ),
        (lambda p: p.parent / "missing.dcm", r"missing.dcm does not exist; give a multi-frame DICOM file"),
    ],
    ids=["not-dicom", "no-pixels", "single-frame", "no-handler", "no-decoder", "palette", "16-bit", "missing"],
)
async def test_bad_files_fail_on_open_with_one_line_naming_file_and_fix(tmp_path, make, message):
    path = make(tmp_path / "bad.dcm")
    with pytest.raises(SourceError, match=message) as info:
        await collect(DicomSource(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


async def test_folder_without_a_cine_loop_is_an_error(tmp_path):
    write_cine(tmp_path / "still.dcm", frames_rgb(1))
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match=r"holds no multi-frame DICOM image \(2 files skipped"):
        await collect(DicomSource(tmp_path))


async def test_undecodable_loop_in_a_folder_is_an_error(tmp_path):
    write_cine(tmp_path / "good.dcm", frames_rgb(2))
    bad = write_cine(tmp_path / "lossless.dcm", frames_rgb(2), syntax=JPEGLosslessSV1)
    with pytest.raises(SourceError, match="no installed handler") as info:
        await collect(DicomSource(tmp_path))
    assert str(bad) in str(info.value)


async def test_truncated_file_delivers_good_frames_then_fails(tmp_path):
    path = write_cine(tmp_path / "cut.dcm", frames_rgb(6))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 16 * 24 * 2 - 100])  # the last 2+ frames are missing
    frames = []
    with pytest.raises(SourceError, match=r"cut.dcm.*(truncated|corrupt)"):
        async with DicomSource(path, pacing=False) as source:
            async for frame in source:
                frames.append(frame)
    assert 1 <= len(frames) <= 3


def _cut(path, size):
    data = path.read_bytes()
    path.write_bytes(data[:size])
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: write_cine(p, frames_rgb(3), tags={"NumberOfFrames": 0}), r"declares Number of Frames 0; .*corrupt"),
        (
            lambda p: _cut(write_cine(p, frames_rgb(3)), 300),
            r"is an image \(Ultrasound Multi-frame Image Storage\) but ends before its pixel data \(300 bytes\); .*truncated",
        ),
        (
            lambda p: write_cine(p, frames_rgb(3), tags={"Rows": 0}),
            r"declares frames of 24x0 pixels; the file is corrupt",
        ),
    ],
    ids=["zero-frames", "cut-to-300-bytes", "no-rows"],
)
async def test_corrupt_files_are_called_corrupt_alone_and_in_a_folder(tmp_path, make, message):
    # Before issue #21: NumberOfFrames=0 was "a single-frame image" and a file cut to 300 bytes
    # "held no pixel data", so a folder skipped both as not being cine loops.
    bad = make(tmp_path / "exam" / "bad.dcm")
    with pytest.raises(SourceError, match=message) as info:
        await collect(DicomSource(bad))
    assert "\n" not in str(info.value)
    good = write_cine(tmp_path / "exam" / "good.dcm", frames_rgb(2))
    source = DicomSource(tmp_path / "exam", pacing=False)
    frames = await collect(source)
    assert [f.segment.name for f in frames] == [good.name] * 2  # the exam goes on without it
    assert source.counters["corrupt_files"] == 1 and source.counters["skipped_files"] == 0


async def test_a_declared_decompression_bomb_is_refused_before_decoding(tmp_path):
    # issue #21: a valid RLE file declaring 2 frames of 65535x65535 took RSS past 6 GB.
    path = write_cine(tmp_path / "bomb.dcm", frames_rgb(2), syntax=RLELossless, tags={"Rows": 65535, "Columns": 65535})
    with pytest.raises(
        SourceError, match=r"declares frames of 65535x65535x1 \(4294836225 bytes\), over max_frame_bytes"
    ) as info:
        await collect(DicomSource(path))
    assert "\n" not in str(info.value)
    small = write_cine(tmp_path / "big.dcm", frames_rgb(2))  # 16x24: within a limit of 384 bytes, not of 383
    assert len(await collect(parse_source(f"dicom:{small}?max_frame_bytes=384", pacing=False))) == 2
    with pytest.raises(SourceError, match="over max_frame_bytes=383"):
        await collect(parse_source(f"dicom:{small}", max_frame_bytes=383))


def _spoil_jpeg_frame(path, index, seed=0):
    """Overwrite 200 bytes inside the entropy-coded data of JPEG frame ``index`` with random bytes."""
    ds = pydicom.dcmread(path)
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    data = bytearray(frames[index])
    start = data.index(b"\xff\xda") + 12
    data[start : start + 200] = np.random.default_rng(seed).integers(0, 256, 200, dtype=np.uint8).tobytes()
    frames[index] = bytes(data)
    ds.PixelData = encapsulate(frames)
    ds.save_as(path, enforce_file_format=True)


async def test_corrupt_jpeg_data_is_a_counted_bad_frame_not_garbage(tmp_path, caplog):
    # issue #21: 200 random bytes inside frame 5's compressed data decoded to garbage, silently.
    rgb = np.stack([frames_rgb(1, seed=s)[0] for s in range(8)])
    rgb = np.stack([np.kron(f, np.ones((8, 8, 1), np.uint8)) for f in rgb])  # 128x192: room for 200 bytes
    path = write_cine(tmp_path / "jpeg.dcm", rgb, photometric="YBR_FULL_422", syntax=JPEGBaseline8Bit)
    _spoil_jpeg_frame(path, 5)
    source = DicomSource(path, pacing=False)
    frames = await collect(source)
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4, 6, 7]  # frame 5 is left out, visibly
    assert source.counters["bad_messages"] == 1
    assert any("jpeg.dcm: corrupt JPEG" in r.getMessage() for r in caplog.records)
    for frame in frames:  # the others are right
        assert np.abs(frame.image.astype(int) - gray_of(rgb[frame.seq : frame.seq + 1])[0]).mean() < 3


async def test_an_undecodable_rle_file_is_one_line_without_pydicom_traceback(tmp_path, caplog):
    path = write_cine(tmp_path / "rle.dcm", frames_rgb(3), syntax=RLELossless)
    ds = pydicom.dcmread(path)
    frames = list(generate_frames(ds.PixelData, number_of_frames=3))
    frames[1] = b"\x01" + b"\xff" * (len(frames[1]) - 1)  # a header claiming 1 segment at a wild offset
    ds.PixelData = encapsulate(frames)
    ds.save_as(path, enforce_file_format=True)
    caplog.set_level(logging.DEBUG)
    got = []
    with pytest.raises(SourceError, match=r"rle.dcm: frame 1 of 3 cannot be decoded") as info:
        async with DicomSource(path, pacing=False) as source:
            async for frame in source:
                got.append(frame)
    assert len(got) == 1 and "\n" not in str(info.value)
    assert not [r for r in caplog.records if r.exc_info]  # pydicom's own traceback is not printed


@pytest.mark.parametrize(("frame_time", "rate", "tag"), [("1e9", 20.0, "CineRate"), ("1e-9", 20.0, "CineRate")])
async def test_frame_rates_outside_the_bounds_are_not_believed(tmp_path, caplog, frame_time, rate, tag):
    # issue #21: Frame Time 1e9 ms replayed at 0.001 frames/s, 1e-9 ms was taken as 1e12 frames/s.
    path = write_cine(tmp_path / "loop.dcm", frames_rgb(2), tags={"FrameTime": frame_time, "CineRate": 20})
    source = DicomSource(path)
    async with source:
        pass
    assert (source.files[0].rate, source.files[0].rate_tag) == (rate, tag)
    assert any("FrameTime" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)
