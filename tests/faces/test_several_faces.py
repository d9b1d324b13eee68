"""Photos with several faces: verify answers for the closest pair and says which; identify answers per face."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from cnnlab.commands.main import main
from cnnlab.data import align
from cnnlab.data.align import TEMPLATE_112, FaceDetector
from cnnlab.inference.faces import FaceVerifier, closest_pair
from cnnlab.inference.gallery import Gallery
from cnnlab.losses import LpDistance

pytest.importorskip("cv2")

RED, BLUE = (220, 40, 40), (40, 40, 220)


def _photo(path, *faces: tuple[int, int, int, tuple, float]):
    """A 360x240 photo with a coloured, textured square (x0, y0, side, colour, blur) for each face."""
    img = Image.new("RGB", (360, 240), (120, 120, 120))
    rng = np.random.default_rng(0)
    for x0, y0, side, colour, blur in faces:
        noise = rng.integers(-30, 31, (side, side, 3))
        patch = Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8), mode="RGB")
        img.paste(patch.filter(ImageFilter.GaussianBlur(blur)) if blur else patch, (x0, y0))
    img.save(path)
    return path, [f[:3] for f in faces]


class _Boxes:
    """A detector network that finds the given squares (x0, y0, side) in every image of the given width."""

    def __init__(self, by_width: dict[int, list[tuple[int, int, int]]]):
        self.by_width = by_width

    def detect_faces(self, rgb: np.ndarray) -> list[dict]:
        names = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
        out = []
        for x0, y0, side in self.by_width.get(rgb.shape[1], []):
            lm = TEMPLATE_112 * (side / 112.0) + np.array([x0, y0])
            out.append({"box": [x0, y0, side, side], "confidence": 0.99,
                        "keypoints": {k: (float(x), float(y)) for k, (x, y) in zip(names, lm)}})
        return out


def _colour(x: torch.Tensor) -> torch.Tensor:
    """A stand-in network: the unit-length mean colour of each face, so faces of one colour are 0 apart."""
    return torch.nn.functional.normalize(x.float().mean((2, 3)), dim=1)


@pytest.fixture
def two_photos(tmp_path, monkeypatch):
    """A: a small sharp red face and a large blurred blue one; B (wider): one blue face."""
    a, in_a = _photo(tmp_path / "a.png", (20, 100, 80, RED, 0.0), (150, 10, 200, BLUE, 4.0))
    img_b = Image.new("RGB", (400, 240), (120, 120, 120))
    img_b.paste(Image.new("RGB", (100, 100), BLUE), (150, 60))
    b = tmp_path / "b.png"
    img_b.save(b)
    det = FaceDetector(network=lambda: _Boxes({360: in_a, 400: [(150, 60, 100)]}))
    monkeypatch.setattr(align, "detector", lambda: det)
    return a, b


def test_closest_pair_is_the_nearest_and_a_nan_is_never_hidden():
    ea = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    eb = torch.tensor([[0.1, 1.0], [1.0, 1.0], [5.0, 5.0]])
    assert closest_pair(ea, eb) == (1, 0)
    eb[2, 0] = float("nan")
    i, j = closest_pair(ea, eb)
    assert torch.isnan(LpDistance().pairwise(ea, eb)[i, j])  # answered for with NaN, never a finite pair


def test_verify_answers_for_the_closest_pair_and_says_which_faces(finished_run, two_photos):
    a, b = two_photos
    fv = FaceVerifier.from_run(finished_run, device="cpu", align="detect").with_network(_colour)
    r = fv.verify(a, b)
    assert [len(c) for c in r["compared"]] == [2, 1]
    red, blue = r["compared"][0]
    assert red["box"][0] == 20 and blue["box"][0] == 150  # the sharp subject first, the blurred face second
    assert red["quality"] > blue["quality"] and red["sharpness"] > blue["sharpness"]
    assert r["faces"] == [blue, r["compared"][1][0]]  # the pair answered for: A's blue face and B's
    assert r["distance"] == pytest.approx(0.0, abs=1e-3) and r["same_person"]


def test_identify_answers_for_each_face_the_subject_first(finished_run, two_photos, tmp_path):
    a, _ = two_photos
    gallery = tmp_path / "gallery"
    for name, colour in (("Red", RED), ("Blue", BLUE)):  # as photo B: one face, found where B's is
        (gallery / name).mkdir(parents=True)
        img = Image.new("RGB", (400, 240), (120, 120, 120))
        img.paste(Image.new("RGB", (100, 100), colour), (150, 60))
        img.save(gallery / name / f"{name}_0001.png")
    fv = FaceVerifier.from_run(finished_run, device="cpu", align="detect").with_network(_colour)
    files = ["Red/Red_0001.png", "Blue/Blue_0001.png"]
    g = Gallery(fv.embed([gallery / f for f in files]), torch.tensor([0, 1]), ["Red", "Blue"], files, gallery)
    each = fv.identify_faces(a, g, k=2)
    assert [e["face"]["box"][0] for e in each] == [20, 150]
    assert [e["matches"][0]["name"] for e in each] == ["Red", "Blue"]
    assert fv.identify(a, g, k=2) == each[0]["matches"]


def test_the_commands_print_the_faces_compared(finished_run, two_photos, tmp_path, capsys, monkeypatch):
    a, b = two_photos
    assert main(["faces", "verify", str(finished_run), str(a), str(b), "--align", "detect", "--device", "cpu",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [len(c) for c in r["compared"]] == [2, 1] and r["faces"][1] == r["compared"][1][0]
    assert main(["faces", "verify", str(finished_run), str(a), str(b), "--align", "detect", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"{a}: 2 face(s) compared" in out and f"{b}: 1 face(s) compared" in out
