"""The ZeroMQ wire format: encoding, imagezmq compatibility, and every rejection reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
from zmq_peer import _imagezmq_array, _imagezmq_jpg, _jpeg_claiming, _rgb_jpeg

from core.errors import SourceError
from sources.guard import BadMessage, jpeg_shape, to_uint8
from sources.wire import decode_message, encode_array, encode_jpg


def test_array_round_trip_keeps_values_and_optional_fields():
    image = np.arange(24 * 32 * 3, dtype=np.uint8).reshape(24, 32, 3)
    parts = encode_array(image, msg="cam", seq=5, timestamp=12.5)
    header, array = decode_message(parts)
    assert header == {"msg": "cam", "dtype": "uint8", "shape": [24, 32, 3], "seq": 5, "timestamp": 12.5}
    assert np.array_equal(array, image)
    assert not array.flags.writeable  # a view of the received payload, not a copy


def test_jpeg_round_trip_in_rgb_order():
    image = np.zeros((16, 24, 3), np.uint8)
    image[..., 0] = 250  # red
    header, array = decode_message(encode_jpg(image, msg="x", seq=1, quality=95))
    assert header["jpg"] is True and header["seq"] == 1
    assert array.shape == (16, 24, 3)
    assert array[..., 0].min() > 230 and array[..., 1:].max() < 25


def test_imagezmq_messages_are_understood():
    rgb = np.full((8, 10, 3), 77, np.uint8)
    header, array = decode_message(_imagezmq_array(rgb, "rpi"))
    assert header["msg"] == "rpi" and np.array_equal(array, rgb)
    header, array = decode_message(_imagezmq_jpg(_rgb_jpeg(120), "rpi"))
    assert header == {"msg": "rpi"} and array.shape == (24, 32, 3) and abs(int(array.mean()) - 120) <= 2


def test_jpeg_shape_reads_the_frame_header_only():
    assert jpeg_shape(_rgb_jpeg(0)) == (24, 32, 3)
    assert jpeg_shape(_jpeg_claiming(60000, 50000)) == (60000, 50000, 3)


def test_other_dtypes_only_when_allowed_and_converted_to_uint8():
    deep = np.array([[0, 256, 65535]], np.uint16)
    with pytest.raises(BadMessage, match="dtype 'uint16' is not allowed"):
        decode_message(encode_array(deep))
    _, array = decode_message(encode_array(deep), allowed_dtypes=("uint8", "uint16"))
    assert to_uint8(array).tolist() == [[0, 1, 255]]
    floats = np.array([[-1.0, 0.5, 2.0]], np.float32)
    _, array = decode_message(encode_array(floats), allowed_dtypes=("float32",))
    assert to_uint8(array).tolist() == [[0, 128, 255]]


def _header(**fields) -> bytes:
    return json.dumps(fields).encode()


GOOD_HEADER = {"msg": "m", "dtype": "uint8", "shape": [4, 5]}


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([b"just one part"], "expected 2 message parts"),
        ([_header(**GOOD_HEADER), bytes(20), b"x"], "expected 2 message parts"),
        ([b" " * 70000, bytes(20)], "over the 65536-byte limit"),
        ([b"{oops", bytes(20)], "not UTF-8 JSON"),
        ([b"\xff\xfe", bytes(20)], "not UTF-8 JSON"),
        ([b"[1, 2]", bytes(20)], "must be a JSON object"),
        ([_header(**GOOD_HEADER, seq=-3), bytes(20)], "seq must be a non-negative integer"),
        ([_header(**GOOD_HEADER, seq=True), bytes(20)], "seq must be a non-negative integer"),
        ([_header(**GOOD_HEADER, timestamp="now"), bytes(20)], "timestamp must be a finite number"),
        ([_header(msg="m", dtype="object", shape=[4, 5]), bytes(20)], "dtype 'object' is not allowed"),
        ([_header(msg="m", dtype="uint8", shape=[20]), bytes(20)], "shape must be"),
        ([_header(msg="m", dtype="uint8", shape=[2, 2, 5, 1]), bytes(20)], "shape must be"),
        ([_header(msg="m", dtype="uint8", shape=[4, -5]), bytes(20)], "shape must be"),
        ([_header(msg="m", dtype="uint8", shape=[4, 5.0]), bytes(20)], "shape must be"),
        ([_header(msg="m", dtype="uint8", shape="4x5"), bytes(20)], "shape must be"),
        ([_header(msg="m", dtype="uint8", shape=[2, 2, 5]), bytes(20)], "5 channels"),
        (
            [_header(msg="m", dtype="uint8", shape=[100000, 100000, 3]), bytes(20)],
            "header claims a 30000000000-byte frame",
        ),
        ([_header(**GOOD_HEADER), bytes(19)], "payload has 19 bytes but shape"),
        ([_header(**GOOD_HEADER), bytes(100)], "payload of 100 bytes is over max_frame_bytes=64"),
        ([_header(msg="m", jpg=True), b"not a jpeg at all"], "not a JPEG"),
        ([_header(msg="m", jpg=True), b"\xff\xd8\x00\x00garbage"], "marker expected"),
        ([_header(msg="m", jpg=True), _jpeg_claiming(60000, 60000)], "decodes over the limit of 1048576 bytes"),
        ([_header(msg="m", jpg=True), _rgb_jpeg(0)[:200]], "corrupt JPEG"),
    ],
)
def test_bad_messages_are_rejected_with_the_reason(parts, reason):
    limit = 64 if reason.startswith("payload of 100") else 2**20
    with pytest.raises(BadMessage, match=reason) as exc:
        decode_message(parts, max_frame_bytes=limit)
    assert isinstance(exc.value, SourceError)


def test_encode_jpg_rejects_what_jpeg_cannot_hold():
    with pytest.raises(SourceError, match="uint8"):
        encode_jpg(np.zeros((4, 4), np.float32))
