"""The service on photos with several faces: /verify says which faces it compared and shows the pair's crops,
/identify answers for each face."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from cnnlab.data import align
from cnnlab.data.align import FaceDetector
from tests.faces.test_several_faces import BLUE, RED, _Boxes, _photo
from tests.serve.conftest import needs_extra

pytestmark = needs_extra


@pytest.fixture
def client(finished_run, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    a, in_a = _photo(tmp_path / "a.png", (20, 100, 80, RED, 0.0), (150, 10, 200, BLUE, 4.0))
    gallery = tmp_path / "gallery"
    for name, colour in (("Red", RED), ("Blue", BLUE)):  # 400 px wide: one face where _Boxes finds it
        (gallery / name).mkdir(parents=True)
        img = Image.new("RGB", (400, 240), (120, 120, 120))
        img.paste(Image.new("RGB", (100, 100), colour), (150, 60))
        img.save(gallery / name / f"{name}_0001.png")
    det = FaceDetector(network=lambda: _Boxes({360: in_a, 400: [(150, 60, 100)]}))
    monkeypatch.setattr(align, "detector", lambda: det)
    app = create_app(finished_run, gallery=gallery, device="cpu", align="detect")
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, a, gallery / "Blue" / "Blue_0001.png", finished_run


def _pixels(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_verify_names_the_faces_compared_and_shows_the_pairs_crops(client):
    from cnnlab.inference.faces import FaceVerifier

    c, a, b, run = client
    r = c.post("/verify?crops=true", files={"a": ("a.png", a.read_bytes()), "b": ("b.png", b.read_bytes())})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [len(x) for x in body["compared"]] == [2, 1]
    assert body["faces"][0] in body["compared"][0] and body["faces"][1] == body["compared"][1][0]
    # the crops are those of the pair answered for, among the faces compared
    each = FaceVerifier.from_run(run, device="cpu", align="detect").candidates([a, b])
    i = body["compared"][0].index(body["faces"][0])
    assert np.array_equal(_pixels(body["crops"][0]), np.asarray(each[0][i].image))
    assert np.array_equal(_pixels(body["crops"][1]), np.asarray(each[1][0].image))


def test_identify_answers_for_each_face_the_subject_first(client):
    c, a, _, _ = client
    r = c.post("/identify?k=2", files={"image": ("a.png", a.read_bytes())})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [f["face"]["box"][0] for f in body["faces"]] == [20, 150]
    assert body["matches"] == body["faces"][0]["matches"] and body["face"] == body["faces"][0]["face"]
    assert all(m["thumbnail"].startswith("/gallery/") for f in body["faces"] for m in f["matches"])
