"""Decode rates of the clinical sources, printed as one JSON object.

- ``dicom``: frames per second of ``DicomSource(pacing=False)`` on a 640x480 cine loop, per
  photometric interpretation and transfer syntax (H.264 by libx264 at its defaults), gray at 224x224 (the classifier's input) and
  RGB at the native size. The files are written to a temporary folder first (pydicom; JPEG frames
  by Pillow).
- ``rle_rgb_decoder_fps``: frames per second of ``pydicom.pixels.iter_pixels`` alone on the RGB
  RLE loop, with pydicom's own RLE decoder and with pylibjpeg-rle.
- ``igtl_crc_ms``: milliseconds to check the CRC-64 of one 640x480 gray / RGB IMAGE body
  (pyigtl's crcmod function), the per-frame cost of ``check_crc``.

    .venv/bin/python benchmarks/bench_clinical_sources.py [--frames 100]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space, iter_pixels
from pydicom.uid import (
    MPEG4HP41,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)
from pyigtl.messages import CRC64

from sources.dicom import DicomSource

H, W = 480, 640


def _frames(count: int) -> np.ndarray:
    """Ultrasound-like RGB frames: speckle, blurred, gray with a coloured overlay."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(count):
        gray = cv2.GaussianBlur(rng.rayleigh(40, (H, W)).clip(0, 255).astype(np.uint8), (3, 3), 0)
        rgb = np.repeat(gray[..., None], 3, -1)
        rgb[40:80, 40 + i : 140 + i] = (255, 200, 0)
        frames.append(rgb)
    return np.stack(frames)


def _write(path: Path, rgb: np.ndarray, photometric: str, syntax) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundMultiFrameImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.NumberOfFrames, ds.Rows, ds.Columns = len(rgb), H, W
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 1 if photometric == "MONOCHROME2" else 3
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation, ds.CineRate = 7, 0, 30
    pixels = rgb[..., 0] if photometric == "MONOCHROME2" else rgb
    if syntax == MPEG4HP41:
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="h264") as container:
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            for frame in rgb:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax == JPEGBaseline8Bit:
        encoded = []
        for frame in pixels:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
            encoded.append(buffer.getvalue())
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        if photometric == "YBR_FULL":
            pixels = convert_color_space(pixels, "RGB", "YBR_FULL")
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        if syntax == RLELossless:
            ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    return path


async def _rate(path: Path, **options) -> float:
    source = DicomSource(path, pacing=False, **options)
    count = 0
    async with source:
        t0 = time.perf_counter()
        async for _ in source:
            count += 1
    return round(count / (time.perf_counter() - t0), 1)


def _decode_rate(path: Path, plugin: str) -> float:
    """Frames per second of pydicom's frame iterator alone with one decoding plugin."""
    t0 = time.perf_counter()
    count = sum(1 for _ in iter_pixels(path, decoding_plugin=plugin))
    return round(count / (time.perf_counter() - t0), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    args = parser.parse_args()
    rgb = _frames(args.frames)
    cases = [
        ("MONOCHROME2", ExplicitVRLittleEndian),
        ("MONOCHROME2", RLELossless),
        ("MONOCHROME2", JPEGBaseline8Bit),
        ("RGB", ExplicitVRLittleEndian),
        ("RGB", RLELossless),
        ("YBR_FULL", RLELossless),
        ("YBR_FULL_422", JPEGBaseline8Bit),
        ("YBR_PARTIAL_420", MPEG4HP41),
    ]
    dicom: dict = {}
    rle: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        for photometric, syntax in cases:
            path = _write(Path(folder) / f"{photometric}-{syntax}.dcm", rgb, photometric, syntax)
            dicom[f"{photometric} {syntax.name}"] = {
                "MB": round(path.stat().st_size / 1e6, 1),
                "fps_gray_224": asyncio.run(_rate(path, size=224)),
                "fps_rgb_native": asyncio.run(_rate(path, gray=False)),
            }
            if (photometric, syntax) == ("RGB", RLELossless):
                rle = {plugin: _decode_rate(path, plugin) for plugin in ("pydicom", "pylibjpeg")}
    crc = {}
    for label, body in (("gray", rgb[0, ..., 0].tobytes()), ("rgb", rgb[0].tobytes())):
        t0 = time.perf_counter()
        for _ in range(20):
            CRC64(body)
        crc[label] = round(1000 * (time.perf_counter() - t0) / 20, 2)
    print(
        json.dumps(
            {"frames": args.frames, "size": [W, H], "dicom": dicom, "rle_rgb_decoder_fps": rle, "igtl_crc_ms": crc},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
