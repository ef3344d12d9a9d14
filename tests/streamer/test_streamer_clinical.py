"""The runtime with the clinical sources, built from a RunConfig as `das-stream run` builds it
(in-process, so the test pays no interpreter start): a DICOM cine folder written with pydicom
and a real pyigtl OpenIGTLink server in another process, side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from streamer_help import make_model_file

from streamer.app import build_pipeline
from streamer.config import RunConfig

SOURCES_TESTS = Path(__file__).parents[1] / "sources"
sys.path.insert(0, str(SOURCES_TESTS))
import pydicom  # noqa: E402
from dicom_help import frames_rgb, write_cine  # noqa: E402
from pydicom.uid import RLELossless  # noqa: E402
from sources_help import free_port  # noqa: E402

pytestmark = pytest.mark.timeout(120)


async def test_dicom_folder_and_openigtlink_stream_side_by_side(tmp_path):
    model = make_model_file(tmp_path / "tiny.pt", num_frames=8, k=4)
    exam = tmp_path / "exam"
    write_cine(
        exam / "b.dcm",
        frames_rgb(12),
        photometric="RGB",
        syntax=RLELossless,
        tags={"InstanceNumber": 2, "CineRate": 100},
    )
    write_cine(
        exam / "a.dcm", frames_rgb(9, seed=1), photometric="YBR_FULL", tags={"InstanceNumber": 1, "FrameTime": "10"}
    )
    (exam / "notes.txt").write_text("not DICOM")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(SOURCES_TESTS / "igtl_peer.py"), str(port), "stream"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert server.stdout.readline().strip() == b"ready"
        cfg = RunConfig(
            sources=(f"dicom:{exam}", f"igtl://127.0.0.1:{port}?device=US"),
            model=str(model),
            console=False,
            duration=2.0,
            device="cpu",
            jsonl=str(tmp_path / "out.jsonl"),
            stats_interval=0.25,
        )
        summary = await build_pipeline(cfg).run()
    finally:
        server.kill()
        server.communicate(timeout=10)
    assert summary.errors == [] and set(summary.final) == {"exam", "US"}
    dicom, igtl = summary.final["exam"], summary.final["US"]
    # each file is its own segment (issue #21): a's 9 frames make 8 + 1 padded, b's 12 make 8 + 4 padded;
    # before, the folder was one stream of 21 frames and a window mixed the two files
    assert dicom.frames_in == 21 and dicom.windows == 4
    assert dicom.extra["skipped_files"] == 1 and dicom.extra["files_played"] == 2
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    windows = [m for m in lines if m["type"] == "prediction" and m["stream"] == "exam"]
    assert [(w["segment"], w["first_seq"], w["last_seq"], w["padded"]) for w in windows] == [
        ("a.dcm", 0, 7, 0),
        ("a.dcm", 8, 8, 7),
        ("b.dcm", 9, 16, 0),
        ("b.dcm", 17, 20, 4),
    ]
    uids = {name: str(pydicom.dcmread(exam / name).SOPInstanceUID) for name in ("a.dcm", "b.dcm")}
    assert all(w["instance"] == uids[w["segment"]] for w in windows)
    # the exam ends on its own while the OpenIGTLink stream goes on: its final stats come at once,
    # and no stats after them (issue #21: "no frame for N s" until the whole run ended)
    exam_stats = [i for i, m in enumerate(lines) if m["type"] == "stats" and m["stream"] == "exam"]
    assert lines[exam_stats[-1]]["final"] and not any(lines[i]["final"] for i in exam_stats[:-1])
    assert any(m["type"] == "prediction" and m["stream"] == "US" for m in lines[exam_stats[-1] + 1 :])
    assert igtl.frames_in > 20 and igtl.bad_messages == 0
    assert igtl.extra["ignored_messages"] > 0 and igtl.extra["reconnects"] == 0
    for stats in (dicom, igtl):
        assert stats.frames_pending == 0
        assert stats.frames_in == stats.frames_forwarded + stats.frames_skipped + stats.frames_dropped


@pytest.mark.parametrize(("path", "kind"), [("configs/replay_dicom.yaml", "dicom"), ("configs/igtl_feed.yaml", "igtl")])
def test_shipped_configs_build_their_sources(path, kind):
    from sources.spec import parse_source

    cfg = RunConfig.load(path)
    source = parse_source(cfg.sources[0], speed=cfg.speed, pacing=cfg.pacing, loop=cfg.loop)
    assert type(source).__name__ == {"dicom": "DicomSource", "igtl": "IgtlSource"}[kind]
