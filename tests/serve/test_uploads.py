"""Uploads are images when PIL decodes them; every other upload is a 4xx naming the field and the problem."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cnnlab.serve.uploads import UploadError, decode_upload
from tests.serve.conftest import image_bytes


def png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes whose header claims ``width`` x ``height`` pixels: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def _refused(data, status, *parts, **kw):
    with pytest.raises(UploadError) as e:
        decode_upload(data, "a", max_bytes=kw.pop("max_bytes", 1_000_000), **kw)
    assert e.value.status == status
    for p in parts:
        assert p in e.value.message
    return e.value.message


def test_any_format_and_mode_becomes_upright_rgb():
    for fmt in ("PNG", "JPEG", "BMP", "WEBP", "GIF"):
        img = decode_upload(image_bytes(fmt=fmt, size=(30, 20)), "a", max_bytes=10**6)
        assert img.mode == "RGB" and img.size == (30, 20)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 30, 4), dtype=np.uint8), mode="RGBA").save(buf, format="PNG")
    assert decode_upload(buf.getvalue(), "a", max_bytes=10**6).mode == "RGB"
    stored = Image.new("RGB", (30, 20))
    stored.getexif()[0x0112] = 6  # "rotate 90 degrees clockwise to view", as a phone stores a portrait shot
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", exif=stored.getexif())
    assert decode_upload(buf.getvalue(), "a", max_bytes=10**6).size == (20, 30)


def test_the_name_and_content_type_count_for_nothing():
    _refused(b"GIF89a" + b"\0" * 64, 422, "field 'a'")  # begins as a GIF does, is not one
    _refused(b"%PDF-1.4 not an image", 422, "field 'a'", "not an image file")


def test_empty_oversized_truncated_and_tiny_uploads_are_named():
    _refused(b"", 422, "field 'a': the file is empty")
    _refused(image_bytes(size=(40, 40)), 413, "field 'a'", "larger than the limit of 100 bytes", max_bytes=100)
    _refused(image_bytes(fmt="PNG", size=(64, 64))[:300], 422, "field 'a'", "cannot be decoded")
    _refused(image_bytes(size=(4, 40)), 422, "field 'a'", "4x40 pixels, smaller than 8x8")


def test_a_decompression_bomb_is_refused_before_it_is_decoded():
    bomb = png_claiming(12_000, 12_000)  # 144 megapixels in a few hundred bytes
    assert len(bomb) < 1000
    _refused(bomb, 413, "field 'a'", "12000x12000 pixels (144.0 megapixels)", "limit of 89.5 megapixels")
    _refused(png_claiming(30_000, 30_000), 413, "field 'a': the image is larger than the limit of 89.5 megapixels",
             "900000000 pixels")  # past twice the limit PIL itself raises
    _refused(image_bytes(size=(40, 40)), 413, "limit of 0.0 megapixels", max_pixels=1000)
