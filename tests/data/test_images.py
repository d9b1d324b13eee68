import numpy as np
import pytest
from PIL import Image

from cnnlab.data.images import decode_rgb, load_many

# Upright: 4 x 3 cells of 8 px (JPEG's block size), each its own colour, so every turn or mirror shows.
_CELLS = np.array([[(220, 30, 30), (30, 220, 30), (30, 30, 220), (220, 220, 30)],
                   [(30, 220, 220), (220, 30, 220), (240, 240, 240), (20, 20, 20)],
                   [(128, 64, 0), (0, 128, 64), (64, 0, 128), (160, 160, 80)]], dtype=np.uint8)
UPRIGHT = np.kron(_CELLS, np.ones((8, 8, 1), dtype=np.uint8))  # (24, 32, 3): wider than tall

# What a camera stores for each EXIF orientation (TIFF/EXIF 2.3, tag 0x0112), written
# from the standard's wording rather than from PIL, so the test does not check PIL against itself.
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # turned 180 degrees
    4: lambda a: a[::-1, :],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored about the main diagonal
    6: lambda a: np.rot90(a, 1),  # shown after turning 90 degrees clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # mirrored about the other diagonal
    8: lambda a: np.rot90(a, -1),  # shown after turning 90 degrees anticlockwise
}
_JPEG_TOLERANCE = 12  # largest per-pixel error of quality-95 4:4:4 JPEG on 8-px solid cells, with margin


def _save(path, orientation: int):
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = np.ascontiguousarray(STORED[orientation](UPRIGHT))
    Image.fromarray(stored).save(path, quality=95, subsampling=0, exif=exif)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_decoded_pixels_are_upright_for_every_exif_orientation(tmp_path, orientation):
    path = _save(tmp_path / f"o{orientation}.jpg", orientation)
    with Image.open(path) as raw:
        assert raw.getexif()[0x0112] == orientation
        stored = np.asarray(raw.convert("RGB"), dtype=np.int16)
    got = np.asarray(decode_rgb(path), dtype=np.int16)
    assert got.shape == UPRIGHT.shape
    assert np.abs(got - UPRIGHT).max() <= _JPEG_TOLERANCE
    if orientation != 1:  # the file's own pixels are not upright: the test would notice a decoder that ignores the tag
        assert stored.shape != UPRIGHT.shape or np.abs(stored - UPRIGHT).max() > 4 * _JPEG_TOLERANCE


def test_every_loader_decodes_upright(tmp_path):
    # load_many is what the face folders and the CIFAR image folders decode through.
    paths = [_save(tmp_path / f"o{o}.jpg", o) for o in (1, 6, 8, 3)]
    arr, kept, bad = load_many(paths, lambda im: im)
    assert kept == [0, 1, 2, 3] and not bad
    want = UPRIGHT.transpose(2, 0, 1).astype(np.int16)  # (3, H, W)
    assert np.abs(arr.astype(np.int16) - want).max() <= _JPEG_TOLERANCE


def test_an_unreadable_orientation_keeps_the_stored_pixels(tmp_path, monkeypatch, caplog):
    from PIL import ImageOps

    path = _save(tmp_path / "odd.jpg", 6)

    def broken(img):
        raise ValueError("bad EXIF block")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    got = np.asarray(decode_rgb(path), dtype=np.int16)
    assert np.abs(got - np.rot90(UPRIGHT, 1)).max() <= _JPEG_TOLERANCE
    assert "odd.jpg" in caplog.text and "EXIF orientation unreadable" in caplog.text
