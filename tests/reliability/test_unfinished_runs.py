"""A run that has not finished training is refused by every command and API that uses a trained run, naming the
epoch it reached and the epochs planned, unless it is allowed (``--allow-unfinished``, ``allow_unfinished=True``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cnnlab.commands.main import main
from cnnlab.errors import CnnlabError, UnfinishedRun
from tests.conftest import StoppedAfterEpoch, train_until, write_cifar_batches
from tests.faces.conftest import _fast_cpu, finished_run, make_people, tiny_config  # noqa: F401 -- reused fixtures
from tests.serve.conftest import image_bytes, needs_extra


def _stop_after(epoch: int):
    def stop(row):
        if row["epoch"] == epoch:
            raise StoppedAfterEpoch
    return stop


@pytest.fixture(scope="module")
def cifar_unfinished(tmp_path_factory) -> Path:
    """A CIFAR run stopped after epoch 1 of 3 (read-only)."""
    from cnnlab.cifar.train import train
    from cnnlab.config import CifarTrainConfig

    root = tmp_path_factory.mktemp("unfinished-cifar")
    data = write_cifar_batches(root / "data")
    cfg = CifarTrainConfig(data_dir=str(data.parent), blocks="E", width=0.125, epochs=3, batch_size=32,
                           eval_batch_size=16, lr=0.02, precision="fp32", device="cpu")
    train_until(train, cfg, root / "run", 1)
    return root / "run"


@pytest.fixture(scope="module")
def faces_unfinished(tmp_path_factory, finished_run) -> dict[str, Path]:
    """Two face runs (read-only): ``never`` stopped after epoch 1 of 3, so without a threshold; ``extended``,
    the finished 2-epoch run extended to 4 epochs and stopped after epoch 3, keeping its threshold."""
    from cnnlab.faces.train import train

    root = tmp_path_factory.mktemp("unfinished-faces")
    faces = make_people(root / "faces")
    with pytest.raises(StoppedAfterEpoch):
        train(tiny_config(faces, epochs=3), root / "never", progress=False, on_epoch=_stop_after(1))
    extended = Path(shutil.copytree(finished_run, root / "extended"))
    with pytest.raises(StoppedAfterEpoch):
        train(tiny_config(finished_run.parent / "faces", epochs=4), extended, resume=True, progress=False,
              on_epoch=_stop_after(3))
    return {"never": root / "never", "extended": extended}


def _refused(argv, run: Path, reached: str, capsys, study: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{run} has not finished training: it stopped after epoch {reached}" in err, err
    assert f"finish it with cnnlab {study} train --resume {run}" in err and "--allow-unfinished" in err, err
    assert "Traceback" not in err


# --- CIFAR --------------------------------------------------------------------------------------------------------


def test_the_unfinished_cifar_run_is_what_a_crash_leaves(cifar_unfinished):
    from cnnlab.files import load_checkpoint

    assert not (cifar_unfinished / "summary.json").exists()
    assert load_checkpoint(cifar_unfinished / "checkpoints" / "last.pt")["epoch"] == 1


def test_cifar_predict_refuses_an_unfinished_run_unless_allowed(cifar_unfinished, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    argv = ["cifar", "predict", str(cifar_unfinished), str(image), "--device", "cpu", "--json"]
    _refused(argv, cifar_unfinished, "1 of 3", capsys, "cifar")
    assert main(argv + ["--allow-unfinished"]) == 0
    out, err = capsys.readouterr()
    top = json.loads(out)[0]["top"]
    assert len(top) == 5 and sum(t["probability"] for t in top) <= 1 + 1e-6
    assert "has not finished training (it stopped after epoch 1 of 3); using its best checkpoint so far" in err


def test_cifar_export_refuses_an_unfinished_run_unless_allowed(cifar_unfinished, tmp_path, capsys):
    out = tmp_path / "net.pt"
    argv = ["cifar", "export", str(cifar_unfinished), "--format", "torchscript", "--out", str(out)]
    _refused(argv, cifar_unfinished, "1 of 3", capsys, "cifar")
    assert not out.exists()
    assert main(argv + ["--allow-unfinished"]) == 0 and out.stat().st_size > 0


def test_cifar_evaluate_names_the_epochs_and_takes_the_same_flag(cifar_unfinished, tmp_path, capsys):
    run = Path(shutil.copytree(cifar_unfinished, tmp_path / "run"))
    argv = ["cifar", "evaluate", str(run), "--tsne-samples", "0", "--device", "cpu"]
    _refused(argv, run, "1 of 3", capsys, "cifar")
    assert not (run / "summary.json").exists() and not (run / "figures").exists()
    assert main(argv + ["--allow-unfinished"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluated_epoch"] == 1 and summary.get("status") != "finished"


def test_the_classifier_api_refuses_an_unfinished_run_unless_allowed(cifar_unfinished):
    from cnnlab import Classifier

    with pytest.raises(UnfinishedRun, match=r"it stopped after epoch 1 of 3; finish it with cnnlab cifar train"):
        Classifier.from_run(cifar_unfinished, device="cpu")
    clf = Classifier.from_run(cifar_unfinished, device="cpu", allow_unfinished=True)
    assert len(clf.predict([np.full((32, 32, 3), 128, dtype=np.uint8)], k=3)[0]["top"]) == 3


@needs_extra
def test_serve_refuses_an_unfinished_cifar_run_unless_allowed(cifar_unfinished, capsys):
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    _refused(["serve", str(cifar_unfinished), "--port", "0", "--device", "cpu"], cifar_unfinished, "1 of 3", capsys,
             "cifar")
    with pytest.raises(UnfinishedRun, match="stopped after epoch 1 of 3"):
        create_app(cifar_unfinished, device="cpu")
    with TestClient(create_app(cifar_unfinished, device="cpu", allow_unfinished=True)) as client:
        r = client.post("/predict?k=2", files={"images": ("x.png", image_bytes(size=(32, 32)))})
    assert r.status_code == 200 and len(r.json()["predictions"][0]["top"]) == 2


# --- faces --------------------------------------------------------------------------------------------------------


def _pair(run: Path) -> list[str]:
    faces = run.parent / "faces"
    return [str(faces / "Person_A" / "Person_A_0001.jpg"), str(faces / "Person_B" / "Person_B_0002.jpg")]


def test_face_verify_and_identify_refuse_an_unfinished_run_unless_allowed(faces_unfinished, capsys):
    run = faces_unfinished["extended"]
    a, b = _pair(run)
    verify = ["faces", "verify", str(run), a, b, "--json", "--device", "cpu"]
    identify = ["faces", "identify", str(run), a, "--gallery", str(Path(a).parents[1]), "-k", "2", "--json",
                "--device", "cpu"]
    for argv in (verify, identify):
        _refused(argv, run, "3 of 4", capsys, "faces")
    threshold = json.loads((run / "summary.json").read_text())["threshold"]
    assert main(verify + ["--allow-unfinished"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["threshold"] == threshold and r["same_person"] == (r["distance"] <= threshold)
    assert main(identify + ["--allow-unfinished"]) == 0
    assert [m["rank"] for m in json.loads(capsys.readouterr().out)[0]["matches"]] == [1, 2]


def test_a_face_run_that_never_finished_has_no_threshold_even_when_allowed(faces_unfinished, capsys):
    run = faces_unfinished["never"]
    argv = ["faces", "verify", str(run), *_pair(run), "--device", "cpu"]
    _refused(argv, run, "1 of 3", capsys, "faces")
    assert main(argv + ["--allow-unfinished"]) == 2
    assert f"{run} has no decision threshold in summary.json" in capsys.readouterr().err


def test_face_export_refuses_an_unfinished_run_unless_allowed(faces_unfinished, tmp_path, capsys):
    run = faces_unfinished["extended"]
    out = tmp_path / "faces.pt"
    argv = ["faces", "export", str(run), "--format", "torchscript", "--out", str(out)]
    _refused(argv, run, "3 of 4", capsys, "faces")
    assert not out.exists()
    assert main(argv + ["--allow-unfinished"]) == 0 and out.stat().st_size > 0


def test_the_face_verifier_api_refuses_an_unfinished_run_unless_allowed(faces_unfinished):
    from cnnlab import FaceVerifier

    run = faces_unfinished["extended"]
    with pytest.raises(UnfinishedRun, match=r"it stopped after epoch 3 of 4; finish it with cnnlab faces train"):
        FaceVerifier.from_run(run, device="cpu")
    fv = FaceVerifier.from_run(run, device="cpu", allow_unfinished=True)
    a, b = _pair(run)
    assert fv.verify(a, a)["same_person"] and fv.verify(a, b)["distance"] > 0
    with pytest.raises(CnnlabError, match="no decision threshold"):
        FaceVerifier.from_run(faces_unfinished["never"], device="cpu", allow_unfinished=True)


@needs_extra
def test_serve_refuses_an_unfinished_face_run_unless_allowed(faces_unfinished):
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    run = faces_unfinished["extended"]
    with pytest.raises(UnfinishedRun, match="stopped after epoch 3 of 4"):
        create_app(run, device="cpu")
    a, _ = _pair(run)
    data = Path(a).read_bytes()
    with TestClient(create_app(run, device="cpu", allow_unfinished=True)) as client:
        r = client.post("/verify", files={"a": ("a.jpg", data), "b": ("b.jpg", data)})
    assert r.status_code == 200 and r.json()["same_person"] is True
