"""An image without a face (or a detector that is not installed) is advised where it is reported.

The library says what happened and that the centre crop is the alternative, naming no option; the CLI says
``--align center``, the Python API ``align="center"``, and the service what its client can do (and what
whoever runs it can: ``cnnlab serve --align center``). The detector is a stub, so no network, weights or
OpenCV are needed.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlab.data.align as align_module
from cnnlab.inference.faces import FaceVerifier
from cnnlab.commands.main import build_parser, main
from cnnlab.data.align import DetectorMissing, NoFace
from tests.faces.conftest import tiny_config

EMBEDDING = 4


class _NoFaces:
    def find(self, img):
        return []


def _no_detector():
    raise DetectorMissing()


@pytest.fixture(params=["no face", "no detector"])
def trouble(request, monkeypatch):
    """The detector finds nothing, or cannot be built; returns the text the message starts with."""
    if request.param == "no face":
        monkeypatch.setattr(align_module, "detector", lambda: _NoFaces())
        return "no face found"
    monkeypatch.setattr(align_module, "detector", _no_detector)
    return "face detection needs OpenCV"


def _verifier(tmp_path, align="detect") -> FaceVerifier:
    """A FaceVerifier on a stand-in for an opened run: what prepare() needs, and a network that gives zeros."""
    opened = SimpleNamespace(cfg=tiny_config(tmp_path), threshold=1.0, device=torch.device("cpu"),
                             model=torch.nn.Identity(), align=align,
                             embeddings=lambda x: torch.zeros(len(x), EMBEDDING))
    return FaceVerifier(opened)


def _grey(path=None):
    img = Image.new("RGB", (64, 64), (90, 90, 90))
    if path is not None:
        img.save(path)
        return path
    return img


def test_the_library_names_no_option(tmp_path, monkeypatch):
    from cnnlab.inference.images import load_face

    monkeypatch.setattr(align_module, "detector", lambda: _NoFaces())
    with pytest.raises(NoFace) as err:
        load_face(_grey(tmp_path / "g.png"), tiny_config(tmp_path), "detect")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'g.png'}: no face found; ") and "centre crop" in message
    assert "--" not in message and "align=" not in message
    monkeypatch.setattr(align_module, "detector", _no_detector)
    with pytest.raises(DetectorMissing) as err:
        align_module.prepare(_grey(), 32, 1.0, "detect")
    assert "centre crop" in str(err.value) and "--align" not in str(err.value)


def test_the_python_api_names_its_parameter(trouble, tmp_path):
    fv = _verifier(tmp_path)
    for call in (lambda: fv.verify(_grey(), _grey()), lambda: fv.embed(np.asarray(_grey())),
                 lambda: fv.prepare(_grey(tmp_path / "g.png"))):
        with pytest.raises((NoFace, DetectorMissing)) as err:
            call()
        message = str(err.value)
        assert trouble in message and 'FaceVerifier.from_run(..., align="center")' in message, message
        assert "--align" not in message


def test_the_cli_names_its_option(trouble, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("backbone: tiny\n")
    monkeypatch.setattr(FaceVerifier, "from_run", classmethod(lambda cls, *a, **k: _verifier(tmp_path)))
    a, b = _grey(tmp_path / "a.png"), _grey(tmp_path / "b.png")
    assert main(["faces", "verify", str(run), str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.count("cnnlab: error: ") == 1 and trouble in err and "Traceback" not in err
    assert "give --align center to take the centre crop instead" in err and "align=" not in err


def test_faces_align_which_has_no_align_option_points_at_training(tmp_path, monkeypatch, capsys):
    import cnnlab.faces.align_folder as align_folder
    from tests.faces.conftest import make_people

    monkeypatch.setattr(align_folder, "detector", _no_detector)  # the name it imported
    src = make_people(tmp_path / "photos", [("Ann", 1)])
    assert main(["faces", "align", str(src), str(tmp_path / "aligned")]) == 2
    err = capsys.readouterr().err
    assert "face detection needs OpenCV" in err and "train on SRC itself with --align center" in err


def test_the_service_says_what_its_client_and_its_operator_can_do(trouble, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("backbone: tiny\n")
    asked = {}

    def from_run(cls, path, **kwargs):
        asked.update(kwargs)
        return _verifier(tmp_path)

    monkeypatch.setattr(FaceVerifier, "from_run", classmethod(from_run))
    png = tmp_path / "g.png"
    _grey(png)
    with TestClient(create_app(run, device="cpu", align="detect")) as client:
        r = client.post("/embed", files={"image": ("g.png", png.read_bytes(), "image/png")})
        v = client.post("/verify", files={"a": ("a.png", png.read_bytes(), "image/png"),
                                          "b": ("b.png", png.read_bytes(), "image/png")})
    assert asked["align"] == "detect"  # cnnlab serve --align reaches the verifier
    for answer, field in ((r, "image"), (v, "a")):
        message = answer.json()["error"]
        assert answer.status_code == (422 if trouble == "no face found" else 400), message
        assert trouble in message and "--align center" in message and "align=" not in message, message
        if trouble == "no face found":
            assert message.startswith(f"field '{field}': no face found; send a photo in which the face is visible")


def test_serve_has_the_align_option_its_advice_names():
    parser = build_parser()
    args = parser.parse_args(["serve", "runs/x", "--align", "center"])
    assert args.align == "center"
    assert parser.parse_args(["serve", "runs/x"]).align is None
