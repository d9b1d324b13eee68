"""A run trained on detected, aligned faces: what it records, and how every later use finds faces the same way.

The faces are scikit-image's astronaut photo (public domain) pasted at different scales and places on
coloured canvases: six "people" of two photos each.
"""

import json
import logging

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cnnlab import FaceVerifier
from cnnlab.commands.main import main
from cnnlab.data.align import TEMPLATE_112
from cnnlab.export import read_metadata

from .conftest import tiny_config


def _photo(face: Image.Image, scale: float, at: tuple[int, int], colour) -> Image.Image:
    canvas = Image.new("RGB", (320, 260), colour)
    canvas.paste(face.resize((int(face.width * scale), int(face.height * scale))), at)
    return canvas


@pytest.fixture(scope="module")
def face():
    from skimage import data

    return Image.fromarray(data.astronaut()).crop((130, 0, 340, 240))


@pytest.fixture(scope="module")
def aligned_run(tmp_path_factory, face):
    from cnnlab.faces.train import train

    base = tmp_path_factory.mktemp("aligned")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        for p in range(6):
            (base / "faces" / f"P{p}").mkdir(parents=True)
            for k in range(2):
                _photo(face, 0.5 + 0.1 * k, (20 + 40 * p, 10 + 20 * k), (30 * p, 100, 200 - 30 * k)).save(
                    base / "faces" / f"P{p}" / f"P{p}_{k}.png")
        train(tiny_config(base / "faces", align="auto", image_size=32), base / "run", progress=False)
    return base / "run"


def test_the_run_records_how_its_faces_were_found(aligned_run):
    assert yaml.safe_load((aligned_run / "config.yaml").read_text())["align"] == "auto"
    a = json.loads((aligned_run / "summary.json").read_text())["alignment"]
    assert a["align"] == "auto" and a["aligned"] == 12 and a["center"] == 0 and a["no_face"] == 0


def test_verify_finds_the_faces_and_reports_them(aligned_run, face, tmp_path, capsys):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    _photo(face, 0.8, (10, 5), (0, 0, 0)).save(a)
    _photo(face, 0.5, (150, 90), (255, 255, 255)).save(b)
    assert main(["faces", "verify", str(aligned_run), str(a), str(b), "--json", "--device", "cpu"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["distance"] < 0.2 and len(r["faces"]) == 2  # the same face, found in two framings
    (x0, y0, x1, y1), lm = r["faces"][1]["box"], r["faces"][1]["landmarks"]
    assert 150 <= x0 < x1 <= 150 + 0.5 * face.width and 90 <= y0 < y1 <= 90 + 0.5 * face.height
    assert len(lm) == 5 and all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in lm)


def test_an_input_without_a_face_is_exit_2_naming_it(aligned_run, face, tmp_path, capsys):
    a, blank = tmp_path / "a.jpg", tmp_path / "blank.jpg"
    _photo(face, 0.8, (10, 5), (0, 0, 0)).save(a)
    Image.new("RGB", (200, 160), (90, 90, 90)).save(blank)
    assert main(["faces", "verify", str(aligned_run), str(a), str(blank), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{blank}: no face found" in err and "--align center" in err
    # --align center takes the centre crop instead, with a warning that the run was trained otherwise.
    assert main(["faces", "verify", str(aligned_run), str(a), str(blank), "--device", "cpu",
                 "--align", "center"]) == 0


def test_several_faces_the_sharp_larger_one_with_a_warning_naming_the_file(aligned_run, face, tmp_path, caplog):
    two = tmp_path / "two.jpg"
    canvas = Image.new("RGB", (520, 300), (20, 120, 60))
    canvas.paste(face, (10, 20))
    canvas.paste(face.resize((105, 120)), (380, 60))
    canvas.save(two)
    fv = FaceVerifier.from_run(aligned_run, device="cpu")
    with caplog.at_level(logging.WARNING):
        prepared = fv.prepare([two])
    assert f"{two}: 2 faces found; using the one the photo is of" in caplog.text
    assert prepared[0].faces == 2 and prepared[0].face.box[0] < 200


def test_the_api_takes_arrays_and_pil_images_and_aligns_them(aligned_run, face):
    fv = FaceVerifier.from_run(aligned_run, device="cpu")
    assert fv.align == "auto"
    photo = _photo(face, 0.7, (30, 30), (200, 200, 0))
    x = fv.preprocess([photo, np.asarray(photo)])
    assert x.shape == (2, 3, 32, 32) and torch.equal(x[0], x[1])
    assert fv.prepare(photo)[0].how == "aligned"


def test_export_records_the_alignment(aligned_run, tmp_path):
    out = tmp_path / "faces.onnx"
    pytest.importorskip("onnx")
    assert main(["faces", "export", str(aligned_run), "--format", "onnx", "--out", str(out)]) == 0
    pre = read_metadata(out)["preprocessing"]
    assert pre["align"] == "auto" and pre["image_size"] == 32 and "MTCNN" in pre["detector"]
    np.testing.assert_allclose(pre["template"], TEMPLATE_112 * 32 / 112, atol=1e-3)
    np.testing.assert_allclose(pre["template_112"], TEMPLATE_112, atol=1e-4)


def test_a_run_saved_before_align_existed_reads_as_center(run_copy):
    cfg = yaml.safe_load((run_copy / "config.yaml").read_text())
    cfg.pop("align")
    (run_copy / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    ckpt_path = run_copy / "checkpoints" / "last.pt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    ckpt["config"].pop("align")
    torch.save(ckpt, ckpt_path)
    assert FaceVerifier.from_run(run_copy, device="cpu").align == "center"
    assert main(["faces", "train", "--resume", str(run_copy), "--epochs", "3"]) == 0
