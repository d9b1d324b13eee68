"""Which face a photo is of, when it holds several: confidence, sharpness and size together, not size alone."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cnnlab.data import align
from cnnlab.data.align import TEMPLATE_112, Face, FaceDetector, prepare, prepare_each, quality, ranked, sharpness

pytest.importorskip("cv2")


def _texture(side: int, seed: int, blur: float = 0.0) -> Image.Image:
    """A patch full of fine detail (a stand-in for a face in focus), or out of focus with ``blur``."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(40, 216, (side, side, 3), dtype=np.uint8), mode="RGB")
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    return img.filter(ImageFilter.GaussianBlur(blur)) if blur else img


def _face(x0: int, y0: int, side: int, score: float = 0.99) -> Face:
    lm = (TEMPLATE_112 * (side / 112.0) + np.array([x0, y0], dtype=np.float32)).astype(np.float32)
    return Face((float(x0), float(y0), float(x0 + side), float(y0 + side)), lm, score)


def _photo(*patches: tuple[int, int, int, float]) -> Image.Image:
    """A 360x240 photo with a textured square (x0, y0, side, blur) for each face, on a plain background."""
    img = Image.new("RGB", (360, 240), (120, 120, 120))
    for i, (x0, y0, side, blur) in enumerate(patches):
        img.paste(_texture(side, seed=i, blur=blur), (x0, y0))
    return img


class _Listed:
    """A detector network that answers with the given faces, in MTCNN's dicts."""

    def __init__(self, faces: list[Face]):
        self.faces = faces

    def detect_faces(self, rgb: np.ndarray) -> list[dict]:
        names = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
        return [{"box": [f.box[0], f.box[1], f.box[2] - f.box[0], f.box[3] - f.box[1]],
                 "keypoints": {k: tuple(float(v) for v in xy) for k, xy in zip(names, f.landmarks)},
                 "confidence": f.score} for f in self.faces]


SUBJECT = (20, 80, 80, 0.0)  # sharp, 80 px
POSTER = (180, 20, 160, 3.0)  # twice as wide, out of focus


def test_a_face_out_of_focus_is_much_less_sharp_and_contrast_does_not_count():
    img = _photo((20, 20, 120, 0.0), (200, 20, 120, 3.0))
    sharp, blurred = sharpness(img, _face(20, 20, 120)), sharpness(img, _face(200, 20, 120))
    assert blurred < 0.2 * sharp
    faint = Image.fromarray((np.asarray(img, dtype=np.float32) * 0.4 + 60).astype(np.uint8), mode="RGB")
    assert sharpness(faint, _face(20, 20, 120)) == pytest.approx(sharp, rel=0.1)


def test_a_face_is_not_sharper_for_being_larger():
    # the same picture at 200 and 100 px: measured at one scale, both are as sharp
    face = _texture(200, seed=0)
    large, small = Image.new("RGB", (360, 240)), Image.new("RGB", (360, 240))
    large.paste(face, (20, 20))
    small.paste(face.resize((100, 100), Image.Resampling.LANCZOS), (20, 20))
    assert sharpness(small, _face(20, 20, 100)) == pytest.approx(sharpness(large, _face(20, 20, 200)), rel=0.25)


def test_degenerate_landmarks_have_no_sharpness():
    f = Face((0.0, 0.0, 10.0, 10.0), np.full((5, 2), 5.0, dtype=np.float32), 0.99)
    assert sharpness(_photo(SUBJECT), f) == 0.0


def test_the_sharp_subject_comes_before_a_larger_blurred_face():
    img = _photo(SUBJECT, POSTER)
    subject, poster = _face(*SUBJECT[:3]), _face(*POSTER[:3])
    order = ranked(img, [poster, subject])  # largest first, as the detector lists them
    assert [f.box for f in order] == [subject.box, poster.box]
    assert order[0].quality == pytest.approx(order[0].score ** align.CONFIDENCE_POWER * np.sqrt(0.5), rel=1e-6)
    assert 0 < order[1].quality < order[0].quality and order[1].sharpness < order[0].sharpness


def test_when_both_are_in_focus_the_larger_comes_first():
    img = _photo((20, 80, 60, 0.0), (180, 20, 160, 0.0))
    order = ranked(img, [_face(20, 80, 60), _face(180, 20, 160)])
    assert order[0].box[0] == 180


def test_a_face_the_detector_doubts_counts_for_little():
    faces = [_face(0, 0, 100, score=0.95), _face(200, 0, 100, score=0.999)]
    q = quality(faces, [1.0, 1.0])
    assert q == pytest.approx([0.95 ** 64, 0.999 ** 64]) and q[1] > 20 * q[0]
    # a sharper, larger detection the detector doubts loses to a face it is sure of
    doubted, sure = _face(0, 0, 160, score=0.95), _face(200, 0, 80, score=0.999)
    assert quality([doubted, sure], [1.0, 0.5]) == pytest.approx([0.95 ** 64, 0.999 ** 64 * 0.5 * np.sqrt(0.5)])
    assert quality([doubted, sure], [1.0, 0.5])[1] > quality([doubted, sure], [1.0, 0.5])[0]


def test_one_face_is_left_as_it_is():
    f = _face(*SUBJECT[:3])
    assert ranked(_photo(SUBJECT), [f]) == [f] and ranked(_photo(SUBJECT), []) == []


def test_prepare_uses_the_subject_and_counts_both_faces():
    img = _photo(SUBJECT, POSTER)
    det = FaceDetector(network=lambda: _Listed([_face(*POSTER[:3]), _face(*SUBJECT[:3])]))
    p = prepare(img, 32, 0.6, "auto", det=det)
    assert p.how == "aligned" and p.faces == 2 and p.face.box == _face(*SUBJECT[:3]).box
    assert p.face.to_dict()["quality"] == pytest.approx(p.face.quality, abs=1e-4)
    each = prepare_each(img, 32, 0.6, "detect", det=det)
    assert [q.face.box for q in each] == [_face(*SUBJECT[:3]).box, _face(*POSTER[:3]).box]
    assert all(q.image.size == (32, 32) and q.faces == 2 for q in each)
    assert len(prepare_each(img, 32, 0.6, "detect", det=det, limit=1)) == 1


def test_prepare_each_gives_one_image_where_nothing_is_detected():
    img = _photo(SUBJECT)
    none = FaceDetector(network=lambda: _Listed([]))
    (p,) = prepare_each(img, 32, 0.6, "auto", det=none)
    assert p.how == "center" and p.face is None
    with pytest.raises(align.NoFace, match="no face found"):
        prepare_each(img, 32, 0.6, "detect", name="photo.jpg", det=none)
    (c,) = prepare_each(img, 32, 0.6, "center")
    assert c.how == "center" and c.faces == 0


def test_a_single_face_has_no_quality_in_its_answer():
    det = FaceDetector(network=lambda: _Listed([_face(*SUBJECT[:3])]))
    d = prepare(_photo(SUBJECT), 32, 0.6, "detect", det=det).face.to_dict()
    assert set(d) == {"box", "landmarks", "score"}
