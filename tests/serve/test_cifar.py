"""A CIFAR run served: /predict gives the Python API's top-k classes for one or more images."""

import json

import pytest

from tests.serve.conftest import image_bytes, needs_extra
from tests.conftest import ACROSS_PATHS

pytestmark = [pytest.mark.numerics, needs_extra]


@pytest.fixture(scope="module")
def classifier(cifar_run):
    from cnnlab import Classifier

    return Classifier.from_run(cifar_run, device="cpu")


def test_predict_answers_as_the_api_for_several_images(cifar_client, classifier, tmp_path):
    paths = []
    for i, (fmt, size) in enumerate([("PNG", (32, 32)), ("JPEG", (70, 50)), ("BMP", (40, 40))]):
        paths.append(tmp_path / f"{i}.{fmt.lower()}")
        paths[-1].write_bytes(image_bytes(fmt=fmt, size=size, seed=i))
    files = [("images", (p.name, p.read_bytes())) for p in paths]
    r = cifar_client.post("/predict?k=3", files=files)
    assert r.status_code == 200
    body = r.json()
    assert [p["filename"] for p in body["predictions"]] == [p.name for p in paths] and body["k"] == 3
    expected = [r["top"] for r in classifier.predict(paths, k=3)]
    for got, want in zip(body["predictions"], expected):
        assert [t["class"] for t in got["top"]] == [t["class"] for t in want]
        assert [t["probability"] for t in got["top"]] == pytest.approx([t["probability"] for t in want], abs=ACROSS_PATHS)
    one = cifar_client.post("/predict", files={"images": ("a.png", paths[0].read_bytes())}).json()
    assert len(one["predictions"]) == 1 and len(one["predictions"][0]["top"]) == 5  # the default k


def test_a_bad_image_among_several_is_named_by_its_place(cifar_client):
    files = [("images", ("ok.png", image_bytes())), ("images", ("bad.png", b"not an image"))]
    r = cifar_client.post("/predict", files=files)
    assert r.status_code == 422 and r.json()["error"].startswith("field 'images[1]': not an image file")


def test_too_many_images_and_a_bad_k_are_refused(cifar_run):
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    with TestClient(create_app(cifar_run, device="cpu", max_images=2)) as client:
        r = client.post("/predict", files=[("images", (f"{i}.png", image_bytes(seed=i))) for i in range(3)])
        assert r.status_code == 413 and "3 images, more than the 2" in r.json()["error"]
        r = client.post("/predict?k=0", files={"images": ("a.png", image_bytes())})
        assert r.status_code == 400 and r.json()["error"].startswith("field 'k'")


def test_face_endpoints_on_a_cifar_run_say_what_it_serves(cifar_client):
    r = cifar_client.post("/verify", files={"a": ("a.png", image_bytes()), "b": ("b.png", image_bytes())})
    assert r.status_code == 404
    assert r.json()["error"].startswith("/verify is for a face run, and this is a CIFAR run; this service serves "
                                        "POST /predict")


def test_info_describes_the_cifar_run(cifar_client, cifar_run):
    info = cifar_client.get("/info").json()
    summary = json.loads((cifar_run / "summary.json").read_text())
    assert info["study"] == "cifar" and info["endpoints"] == ["POST /predict"]
    assert info["classes"][:2] == ["airplane", "automobile"] and len(info["classes"]) == 10
    assert info["model"]["blocks"] == "E" and info["model"]["width"] == 0.125
    assert info["training"]["test_accuracy"] == summary["test_accuracy"]
    assert "threshold" not in info


def test_a_cifar_run_takes_no_gallery(cifar_run, tmp_path):
    from cnnlab.errors import CnnlabError
    from cnnlab.serve.app import create_app

    with pytest.raises(CnnlabError, match="CIFAR run; a gallery is for face runs"):
        create_app(cifar_run, gallery=tmp_path, device="cpu")
