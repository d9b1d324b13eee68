"""The Python API takes in memory only the images it would take as files: the same size limits, the same words."""

import warnings

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.images import MAX_IMAGE_PIXELS
from cnnlab.errors import DataError
from tests.faces.conftest import _fast_cpu, finished_run  # noqa: F401 -- a tiny face run, reused
from tests.serve.test_uploads import png_claiming
from tests.test_api import cifar_run, classifier  # noqa: F401 -- a tiny CIFAR run, reused


@pytest.fixture(scope="module")
def verifier(finished_run):  # noqa: F811
    from cnnlab import FaceVerifier

    return FaceVerifier.from_run(finished_run, device="cpu")


def _message(call, image) -> str:
    with pytest.raises(DataError) as e:
        call(image)
    return str(e.value)


def _as_file(tmp_path, width: int, height: int) -> str:
    path = tmp_path / f"{width}x{height}.png"
    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("width, height", [(0, 0), (1, 1), (7, 40), (40, 7)])
def test_an_image_smaller_than_a_file_may_be_is_refused_in_a_files_words(classifier, verifier, tmp_path,  # noqa: F811
                                                                          width, height):
    expected = f"image 0: is {width}x{height} pixels, smaller than 8x8"
    array = np.zeros((height, width, 3), dtype=np.uint8)
    for call in (classifier.predict, verifier.embed, verifier.preprocess):
        assert _message(call, array) == expected
        if width and height:  # PIL makes no empty image
            assert _message(call, Image.fromarray(array)) == expected
    if width and height:  # the same picture as a file: the same words after its name
        path = _as_file(tmp_path, width, height)
        assert _message(classifier.predict, path) == f"{path}: is {width}x{height} pixels, smaller than 8x8"


def test_a_small_image_in_a_list_is_named_by_its_place(classifier):  # noqa: F811
    good = np.zeros((32, 32, 3), dtype=np.uint8)
    assert _message(classifier.predict, [good, good[:2, :2]]) == "image 1: is 2x2 pixels, smaller than 8x8"
    assert _message(classifier.predict, np.zeros((2, 1, 1, 3), dtype=np.uint8)) == \
        "image 0: is 1x1 pixels, smaller than 8x8"
    assert _message(classifier.predict, np.zeros((0, 8, 8, 3), dtype=np.uint8)) == \
        "images: expected at least one image, got an array of shape (0, 8, 8, 3)"
    assert len(classifier.predict(good[:8, :8])["top"]) == 5  # 8x8 itself is taken


def test_an_image_over_the_pixel_limit_is_refused_as_a_file_is(classifier, verifier, tmp_path):  # noqa: F811
    side = 9500  # 90.2 megapixels: over the limit, under the twice-the-limit at which PIL itself refuses
    assert MAX_IMAGE_PIXELS < side * side < 2 * MAX_IMAGE_PIXELS
    expected = f"is {side}x{side} pixels (90.2 megapixels), more than the limit of 89.5 megapixels"
    path = tmp_path / "huge.png"
    path.write_bytes(png_claiming(side, side))
    assert _message(classifier.predict, str(path)) == f"{path}: {expected}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        lazy = Image.open(path)  # only the header is read: no pixel exists yet
    huge = np.broadcast_to(np.zeros((1, 1, 3), dtype=np.uint8), (side, side, 3))  # no memory behind it
    for call in (classifier.predict, verifier.embed):
        assert _message(call, lazy) == f"image 0: {expected}"
        assert _message(call, huge) == f"image 0: {expected}"


def test_twice_the_pixel_limit_in_a_file_says_the_limit(classifier, tmp_path):  # noqa: F811
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(30_000, 30_000))
    assert _message(classifier.predict, str(path)).startswith(f"{path}: is larger than the limit of 89.5 megapixels")
