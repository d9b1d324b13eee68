"""Uploads meet the limits files do: the same pixel limit and aspect ratio, refused before decoding, and a large
blank picture answered quickly."""

import io
import time

import pytest
from PIL import Image

from cnnlab.data.images import MAX_IMAGE_PIXELS, BadImage, decode_rgb
from cnnlab.serve.uploads import UploadError, decode_upload
from tests.serve.conftest import needs_extra
from tests.serve.test_uploads import png_claiming


def blank_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h), 255).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("w, h, ratio", [(5000, 16, "312.5:1"), (20000, 12, "1666.7:1")])
def test_a_long_thin_upload_is_refused_naming_the_field_and_the_ratio(w, h, ratio):
    data = blank_png(w, h)
    assert len(data) < 2000
    with pytest.raises(UploadError) as e:
        decode_upload(data, "image", max_bytes=10**6)
    assert e.value.status == 422
    assert e.value.message == (f"field 'image': the image is {w}x{h} pixels, an aspect ratio of {ratio}, more than "
                                "the 20:1 accepted (no photo is that long and thin)")


def test_uploads_and_files_share_one_pixel_limit(tmp_path):
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 1  # just over the limit, square
    claim = png_claiming(side, side)
    with pytest.raises(UploadError) as e:
        decode_upload(claim, "a", max_bytes=10**6)
    (tmp_path / "big.png").write_bytes(claim)
    with pytest.raises(BadImage) as f:
        decode_rgb(tmp_path / "big.png")
    assert e.value.status == 413
    # One message after the name: the same limit, from the same place.
    assert e.value.message.removeprefix("field 'a': the image ") == f.value.why
    assert f.value.why.endswith("more than the limit of 89.5 megapixels")


@needs_extra
def test_a_blank_9000_pixel_square_sent_to_embed_is_answered_quickly(face_client, monkeypatch):
    fv = face_client.app.state.service.fv
    monkeypatch.setattr(fv, "align", "detect")  # the tiny run centre-crops; a run that detects faces
    data = blank_png(9000, 9000)
    assert len(data) < 200_000  # under the fixture's upload limit: it reaches the detector
    start = time.perf_counter()
    r = face_client.post("/embed", files={"image": ("blank.png", data)})
    assert time.perf_counter() - start < 30.0  # about 3 s on a shared 2-core machine; unbounded, over a minute
    assert r.status_code == 422 and r.json()["error"].startswith("field 'image': no face found")
    r = face_client.post("/embed", files={"image": ("strip.png", blank_png(5000, 16))})
    assert r.status_code == 422 and "aspect ratio of 312.5:1" in r.json()["error"]
