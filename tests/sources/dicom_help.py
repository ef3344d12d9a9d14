"""Small real DICOM cine files for the DICOM source tests, written with pydicom.

``write_cine(path, rgb, photometric=..., syntax=...)`` stores (N, H, W, 3) RGB frames in the
given photometric interpretation (gray ones as their BT.601 luma) and transfer syntax: native
(explicit VR little endian), RLE Lossless (pydicom's encoder), JPEG Baseline or JPEG 2000
Lossless (each frame encoded by Pillow, then encapsulated).
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    MPEG4HP41,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

H, W = 16, 24


def frames_rgb(count: int, *, seed: int = 0) -> np.ndarray:
    """(count, H, W, 3) smooth colour frames; frame i is brighter by 8 * i, so frames differ."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(40, 160, (H, W, 3), dtype=np.uint8), (5, 5), 0)
    return np.stack([np.clip(base.astype(int) + 8 * i, 0, 255).astype(np.uint8) for i in range(count)])


def gray_of(rgb: np.ndarray) -> np.ndarray:
    """What the source must deliver as gray: OpenCV's RGB -> gray, frame by frame."""
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb])


def _dataset(rgb: np.ndarray, photometric: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.NumberOfFrames = len(rgb)
    ds.Rows, ds.Columns = rgb.shape[1:3]
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 1 if photometric.startswith("MONOCHROME") else 3
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    return ds


def _native(rgb: np.ndarray, photometric: str) -> np.ndarray:
    if photometric == "MONOCHROME2":
        return gray_of(rgb)
    if photometric == "MONOCHROME1":
        return 255 - gray_of(rgb)
    if photometric == "RGB":
        return rgb
    return convert_color_space(rgb, "RGB", "YBR_FULL")


def _ybr_422_bytes(ybr: np.ndarray) -> bytes:
    """Native YBR_FULL_422: per two pixels Y0 Y1 Cb Cr (chroma averaged over the pair)."""
    y = ybr[..., 0].reshape(*ybr.shape[:2], -1, 2)
    chroma = ybr[..., 1:].reshape(*ybr.shape[:2], -1, 2, 2).astype(np.uint16).sum(axis=3) // 2
    return np.concatenate([y, chroma.astype(np.uint8)], axis=-1).tobytes()


def _jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=95, subsampling=1)  # 4:2:2
    return buffer.getvalue()


def _j2k(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG2000", irreversible=False, no_jp2=True)  # lossless, no MCT
    return buffer.getvalue()


def h264_stream(rgb: np.ndarray, *, fps: int = 25) -> bytes:
    """``rgb`` frames as an H.264 elementary stream (Annex B), as DICOM's MPEG-4 syntaxes hold it."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = rgb.shape[2], rgb.shape[1], "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast"}
        for frame in rgb:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def write_mpeg4_cine(path: Path, rgb: np.ndarray, *, tags: dict | None = None, cut: int = 0) -> Path:
    """``rgb`` as an MPEG-4 AVC/H.264 High Profile cine loop (YBR_PARTIAL_420, one stream in
    fragments of at most 4 KB); ``cut`` drops that many bytes from the stream's end."""
    ds = _dataset(rgb, "YBR_PARTIAL_420")
    stream = h264_stream(rgb)
    stream = stream[: len(stream) - cut]
    fragments = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    ds.PixelData = encapsulate([b"".join(fragments)], fragments_per_frame=len(fragments))
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    for keyword, value in (tags or {}).items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_cine(
    path: Path,
    rgb: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    syntax: UID = ExplicitVRLittleEndian,
    tags: dict | None = None,
) -> Path:
    """Write ``rgb`` as a multi-frame US image; ``tags`` adds or overrides elements by keyword."""
    ds = _dataset(rgb, photometric)
    if syntax in (JPEGBaseline8Bit, JPEG2000Lossless):
        pixels = rgb if photometric.startswith("YBR") else _native(rgb, photometric)
        encode = _jpeg if syntax == JPEGBaseline8Bit else _j2k
        ds.PixelData = encapsulate([encode(frame) for frame in pixels])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
        if syntax == JPEGBaseline8Bit:
            ds.LossyImageCompression = "01"
    elif photometric == "YBR_FULL_422":
        ds.PixelData = _ybr_422_bytes(_native(rgb, photometric))
    else:
        ds.PixelData = np.ascontiguousarray(_native(rgb, photometric)).tobytes()
        if syntax == RLELossless:
            ds.compress(RLELossless)
        elif syntax != ExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax  # a syntax we cannot encode: only the header matters
            ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"] * len(rgb))
            ds["PixelData"].VR = "OB"
    for keyword, value in (tags or {}).items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
