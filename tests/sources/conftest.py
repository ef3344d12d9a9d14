"""Fixtures of the source tests: test videos encoded with PyAV, and real peer processes (a
ZeroMQ sender, an MPEG-TS-over-UDP writer) that are always stopped at teardown."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sources_help import KINDS, write_video

HERE = Path(__file__).parent


@pytest.fixture
def make_video(tmp_path: Path) -> Callable[..., Path]:
    """``make_video(kind="mp4", frames=20, fps=25, name="clip")`` writes a test video."""

    def make(kind: str = "mp4", *, frames: int = 20, fps: int = 25, name: str = "clip") -> Path:
        spec = KINDS[kind]
        return write_video(tmp_path / f"{name}{spec.suffix}", spec, frames=frames, fps=fps)

    return make


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """``spawn("zmq_peer.py", *args)`` runs a helper script of this folder in a new Python
    process; every process still running at teardown is killed."""
    started: list[subprocess.Popen] = []

    def run(script: str, *args: object) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, str(HERE / script), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        started.append(process)
        return process

    yield run
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
