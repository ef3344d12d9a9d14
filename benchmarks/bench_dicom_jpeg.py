"""The price of checked JPEG decoding in ``dicom:`` (issue #21): frames per second of
``DicomSource(pacing=False, size=224)`` on a 640x480 JPEG Baseline cine loop (each frame's header
checked, libjpeg-turbo in strict mode through simplejpeg), against the previous path (pydicom's
``iter_pixels`` with Pillow, then the same conversion), alternated in one process.

    python benchmarks/bench_dicom_jpeg.py [--frames 60] [--repeats 5]

Prints one JSON object: per photometric interpretation, the median frames/s of each path and the
median and range of the paired ratios new / old.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from pydicom.pixels import iter_pixels
from pydicom.uid import JPEGBaseline8Bit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "sources"))
from dicom_help import write_cine  # noqa: E402

from sources.dicom import DicomSource  # noqa: E402
from sources.image import OutputFormat  # noqa: E402


def frames(count: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (15, 15), 0)
    return np.stack([np.roll(base, 4 * i, axis=1) for i in range(count)])


async def new_path(path: Path) -> float:
    t0, n = time.perf_counter(), 0
    async with DicomSource(path, pacing=False, size=224) as source:
        async for _ in source:
            n += 1
    return n / (time.perf_counter() - t0)


def old_path(path: Path, photometric: str) -> float:
    output = OutputFormat(gray=True, size=(224, 224))
    t0, n = time.perf_counter(), 0
    for array in iter_pixels(path, raw=True):
        output.apply(np.ascontiguousarray(array[:, :, 0] if photometric.startswith("YBR") else array))
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for photometric in ("MONOCHROME2", "YBR_FULL_422"):
            path = write_cine(
                Path(tmp) / f"{photometric}.dcm",
                frames(args.frames),
                photometric=photometric,
                syntax=JPEGBaseline8Bit,
                tags={"CineRate": 30},
            )
            new, old = [], []
            for _ in range(args.repeats):
                new.append(asyncio.run(new_path(path)))
                old.append(old_path(path, photometric))
            ratios = sorted(n / o for n, o in zip(new, old))
            out[photometric] = {
                "new_fps": round(float(np.median(new)), 1),
                "old_fps": round(float(np.median(old)), 1),
                "ratio_median": round(float(np.median(ratios)), 2),
                "ratio_range": [round(ratios[0], 2), round(ratios[-1], 2)],
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
