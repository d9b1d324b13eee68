"""A face run served: /verify, /identify, /embed and thumbnails answer as the Python API does."""

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.serve.conftest import faces_of, image_bytes, needs_extra
from tests.conftest import ACROSS_PATHS, NEAR_ZERO_DISTANCE

pytestmark = [pytest.mark.numerics, needs_extra]


@pytest.fixture(scope="module")
def verifier(finished_run):
    from cnnlab import FaceVerifier

    return FaceVerifier.from_run(finished_run, device="cpu")


def _files(finished_run, *names):
    return [faces_of(finished_run) / n.split("/")[0] / n.split("/")[1] for n in names]


def _decode_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_verify_answers_as_the_api_with_the_crops_the_network_saw(face_client, finished_run, verifier):
    a, b = _files(finished_run, "Person_A/Person_A_0001.jpg", "Person_B/Person_B_0002.jpg")
    r = face_client.post("/verify?crops=true", files={"a": ("x.jpg", a.read_bytes()), "b": ("y", b.read_bytes())})
    assert r.status_code == 200
    body, expected = r.json(), verifier.verify(a, b)
    assert body["distance"] == pytest.approx(expected["distance"], abs=ACROSS_PATHS)
    assert body["threshold"] == expected["threshold"] and body["same_person"] == expected["same_person"]
    assert body["faces"] == expected.get("faces", [None, None])
    crops = verifier.preprocess([a, b])  # (2, 3, S, S)
    for url, crop in zip(body["crops"], crops):
        assert np.array_equal(_decode_data_url(url), crop.permute(1, 2, 0).numpy())
    same = face_client.post("/verify", files={"a": ("a", a.read_bytes()), "b": ("b", a.read_bytes())}).json()
    assert same["distance"] == pytest.approx(0.0, abs=NEAR_ZERO_DISTANCE) and same["same_person"] and "crops" not in same


def test_identify_finds_the_probes_person_with_thumbnails_by_index(face_client, finished_run, verifier):
    probe, = _files(finished_run, "Person_C/Person_C_0003.jpg")
    r = face_client.post("/identify?k=3", files={"image": ("p.png", image_bytes(probe))})
    assert r.status_code == 200
    matches = r.json()["matches"]
    expected = verifier.identify(probe, faces_of(finished_run), k=3)
    assert [m["name"] for m in matches] == [e["name"] for e in expected]
    assert [m["distance"] for m in matches] == pytest.approx([e["distance"] for e in expected], abs=ACROSS_PATHS)
    top = matches[0]
    assert top["name"] == "Person_C" and top["image"] == "Person_C/Person_C_0003.jpg" and top["same_person"]
    assert top["thumbnail"] == f"/gallery/{top['id']}/thumbnail"
    thumb = face_client.get(top["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    served = Image.open(io.BytesIO(thumb.content))
    assert served.size == Image.open(probe).size  # 48 px: under the thumbnail side, so kept as it is


@pytest.mark.parametrize("path", ["/gallery/9999/thumbnail", "/gallery/-1/thumbnail", "/gallery/..%2Fx/thumbnail",
                                  "/gallery/%2Fetc%2Fpasswd/thumbnail", "/gallery/0/../../config.yaml"])
def test_no_client_path_reaches_the_filesystem(face_client, path):
    r = face_client.get(path)
    assert 400 <= r.status_code < 500 and "error" in r.json()
    assert r.headers["content-type"] == "application/json"


def test_embed_gives_the_apis_embedding(face_client, finished_run, verifier):
    path, = _files(finished_run, "Person_D/Person_D_0002.jpg")
    r = face_client.post("/embed", files={"image": ("d.jpg", path.read_bytes())})
    assert r.status_code == 200
    body = r.json()
    assert body["dim"] == 16 and body["normalized"] is True
    assert torch.allclose(torch.tensor(body["embedding"]), verifier.embed(path)[0], atol=ACROSS_PATHS)


def test_identify_without_a_gallery_says_how_to_start_with_one(finished_run):
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    with TestClient(create_app(finished_run, device="cpu")) as client:
        r = client.post("/identify", files={"image": ("a.png", image_bytes())})
        assert r.status_code == 400 and "--gallery DIR" in r.json()["error"]
        assert client.get("/info").json()["gallery"] is None
        assert client.get("/gallery/0/thumbnail").status_code == 404


def test_a_missing_gallery_folder_stops_the_start(finished_run, tmp_path):
    from cnnlab.errors import CnnlabError
    from cnnlab.serve.app import create_app

    with pytest.raises(CnnlabError, match="^gallery .*nope: no such folder"):
        create_app(finished_run, gallery=tmp_path / "nope", device="cpu")


def test_a_face_the_api_cannot_find_is_a_422_naming_the_field(face_client, monkeypatch):
    """Where the run detects faces, an image without one is a NoFace naming it; the client hears its field."""
    import io

    from skimage import data

    fv = face_client.app.state.service.fv
    monkeypatch.setattr(fv, "align", "detect")  # the tiny run centre-crops; a run that detects faces
    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((256, 256)).save(buf, format="JPEG", quality=90)
    r = face_client.post("/verify", files={"a": ("a.png", buf.getvalue()), "b": ("b.png", image_bytes(seed=1))})
    assert r.status_code == 422
    assert r.json()["error"].startswith("field 'b': no face found")


def test_detected_faces_reach_the_client(face_client, monkeypatch):
    """Where the API reports each face's box and landmarks, /verify passes them on."""
    fv = face_client.app.state.service.fv
    real = fv.verify
    face = {"box": [1.0, 2.0, 30.0, 35.0], "landmarks": [[10.0, 12.0]] * 5, "score": 0.98}
    monkeypatch.setattr(fv, "verify", lambda a, b: {**real(a, b), "faces": [face, None]})
    r = face_client.post("/verify", files={"a": ("a.png", image_bytes()), "b": ("b.png", image_bytes(seed=1))})
    assert r.status_code == 200 and r.json()["faces"] == [face, None]


def test_an_api_answer_in_numpy_numbers_and_without_recorded_crops_still_reaches_the_client(face_client, verifier,
                                                                                             monkeypatch):
    """However the API computes its verdict (numpy scores, a network call the service does not see), the client
    gets plain JSON and the crops the API's preprocess makes."""
    fv = face_client.app.state.service.fv
    face = {"box": [np.float32(1), 2, 30, 35], "landmarks": np.ones((5, 2)).tolist(), "score": np.float64(0.9)}
    monkeypatch.setattr(fv, "verify", lambda a, b: {"distance": np.float32(0.5), "threshold": fv.threshold,
                                                    "same_person": np.bool_(False), "faces": [None, face]})
    a, b = image_bytes(size=(40, 30)), image_bytes(size=(50, 50), seed=1)
    r = face_client.post("/verify?crops=true", files={"a": ("a.png", a), "b": ("b.png", b)})
    assert r.status_code == 200
    body = r.json()
    assert body["distance"] == 0.5 and body["same_person"] is False
    assert body["faces"][1] == {"box": [1.0, 2, 30, 35], "landmarks": [[1.0, 1.0]] * 5, "score": 0.9}
    want = verifier.preprocess([Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b))])
    assert np.array_equal(_decode_data_url(body["crops"][1]), want[1].permute(1, 2, 0).numpy())


def test_info_describes_the_face_run(face_client, finished_run):
    import json

    info = face_client.get("/info").json()
    summary = json.loads((finished_run / "summary.json").read_text())
    assert info["study"] == "faces" and info["endpoints"] == ["POST /verify", "POST /identify", "POST /embed"]
    assert info["threshold"] == summary["threshold"]
    assert info["model"]["backbone"] == "tiny" and info["model"]["embedding_dim"] == 16
    assert info["gallery"] == {"people": 13, "images": 43}
    assert info["training"]["roc_auc"] == summary["roc_auc"]
    assert info["batching"]["images"] >= 0


def test_a_link_out_of_the_gallery_is_never_served(finished_run, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    gallery = Path(shutil.copytree(faces_of(finished_run), tmp_path / "gallery"))
    secret = tmp_path / "private.jpg"
    shutil.copy(faces_of(finished_run) / "Person_E" / "Person_E_0001.jpg", secret)
    (gallery / "Person_A" / "Person_A_0009.jpg").symlink_to(secret)
    with TestClient(create_app(finished_run, gallery=gallery, device="cpu")) as client:
        service = client.app.state.service
        linked = service.gallery.embedded.files.index("Person_A/Person_A_0009.jpg")
        assert client.get(f"/gallery/{linked}/thumbnail").status_code == 403  # there, and not served
        assert client.get(f"/gallery/{linked + 1}/thumbnail").status_code == 200  # its neighbour is served
        r = client.post("/identify?k=13", files={"image": ("p.jpg", secret.read_bytes())}).json()
        row = next(m for m in r["matches"] if m["image"] == "Person_A/Person_A_0009.jpg")
        assert row["thumbnail"] is None and row["id"] is None
