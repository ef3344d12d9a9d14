"""How many corrupt JPEGs each decoder notices (issue #21: corrupt DICOM JPEG data was classified
silently). 200 random bytes are written into the entropy-coded data of a 640x480 4:2:2 JPEG at
``--trials`` random places; each decoder either refuses the result or returns pixels.

    python benchmarks/bench_jpeg_corruption.py [--trials 200]

Prints one JSON object: refused counts per decoder, and the mean absolute error of the pixels
Pillow returned for the corruptions it did not refuse.
"""

from __future__ import annotations

import argparse
import io
import json

import av
import cv2
import numpy as np
import simplejpeg
from PIL import Image


def corrupted(jpeg: bytes, trials: int) -> list[bytes]:
    sos = jpeg.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(jpeg[sos + 2 : sos + 4], "big")
    out = []
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        pos = int(rng.integers(start, len(jpeg) - 300))
        data = bytearray(jpeg)
        data[pos : pos + 200] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        out.append(bytes(data))
    return out


def refused_by_ffmpeg(data: bytes) -> bool:
    codec = av.CodecContext.create("mjpeg", "r")
    codec.options = {"err_detect": "explode"}
    try:
        return not (codec.decode(av.Packet(data)) + codec.decode(None))
    except av.FFmpegError:
        return True


def refused_by_simplejpeg(data: bytes) -> bool:
    try:
        simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError:
        return True
    return False


def pillow(data: bytes) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception:  # noqa: BLE001 - any refusal counts
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (9, 9), 0)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90, subsampling=1)
    bad = corrupted(buffer.getvalue(), args.trials)
    decoded = [pillow(d) for d in bad]
    errors = [float(np.abs(d.astype(int) - image).mean()) for d in decoded if d is not None]
    print(
        json.dumps(
            {
                "trials": args.trials,
                "refused_simplejpeg_strict": sum(map(refused_by_simplejpeg, bad)),
                "refused_ffmpeg_explode": sum(map(refused_by_ffmpeg, bad)),
                "refused_pillow": sum(d is None for d in decoded),
                "pillow_mean_abs_error_of_accepted": round(float(np.mean(errors)), 1) if errors else None,
            }
        )
    )


if __name__ == "__main__":
    main()
