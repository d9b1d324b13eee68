"""A checkpoint with NaN weights, or a network that answers NaN: an error everywhere, never a verdict.

NaN embeddings once gave distance 0.0 ("same person" for any two faces) and NaN
logits a confident-looking class. Loading refuses non-finite weights, naming
the file and the first such weight; outputs that are still not finite (an
overflow, weights changed in memory) are an error in the CLI, the Python API
and the service.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnlab.commands.main import main
from cnnlab.errors import CheckpointError, NonFiniteOutput
from cnnlab.files import atomic_torch_save, load_checkpoint
from tests.faces.conftest import _fast_cpu, finished_run  # noqa: F401 -- a finished tiny face run, reused
from tests.reliability.conftest import check_bad_input
from tests.serve.conftest import cifar_run, image_bytes, needs_extra  # noqa: F401 -- a finished tiny CIFAR run


def poison(run: Path, value: float = float("nan"), checkpoint: str = "best.pt") -> str:
    """Put ``value`` into one weight of ``run``'s checkpoint; returns that weight's name."""
    path = run / "checkpoints" / checkpoint
    ckpt = load_checkpoint(path)
    name = [k for k, v in ckpt["model"].items() if v.is_floating_point()][1]
    ckpt["model"][name].view(-1)[0] = value
    atomic_torch_save(ckpt, path)
    return name


def _culprit(run: Path, name: str, kind: str = "NaN", checkpoint: str = "best.pt") -> str:
    return f"checkpoint {run / 'checkpoints' / checkpoint} holds non-finite weights: {name} has {kind}"


def _image(run: Path, person: str = "Person_A", i: int = 1) -> Path:
    return run.parent / "faces" / person / f"{person}_{i:04d}.jpg"


# --- the distance: NaN is no distance ----------------------------------------------------------------------------


def test_safe_sqrt_keeps_nan_and_has_a_finite_gradient_at_zero():
    from cnnlab.losses import LpDistance, _safe_sqrt

    x = torch.tensor([0.0, 4.0, float("nan"), float("inf")], requires_grad=True)
    y = _safe_sqrt(x)
    assert y[0].item() == 0.0 and y[1].item() == pytest.approx(2.0)
    assert torch.isnan(y[2]) and torch.isinf(y[3])
    y[:2].sum().backward()
    assert torch.isfinite(x.grad[:2]).all() and x.grad[0].item() == 0.0

    nan = torch.full((1, 4), float("nan"))
    ok = torch.ones(1, 4)
    assert torch.isnan(LpDistance().paired(nan, ok)).all()
    assert torch.isnan(LpDistance().pairwise(torch.cat([nan, ok]), ok)[0]).all()


def test_a_nan_distance_is_never_the_same_person():
    from cnnlab.inference.faces import pair_verdict

    r = pair_verdict(torch.stack([torch.full((4,), float("nan")), torch.zeros(4)]), threshold=1.0)
    assert r["same_person"] is False and r["distance"] != r["distance"]  # NaN


# --- CIFAR: predict, evaluate, export, the API -------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["cifar", "predict", "{run}", "{image}"],
    ["cifar", "evaluate", "{run}", "--tsne-samples", "0"],
    ["cifar", "export", "{run}", "--format", "torchscript", "--out", "{case}/net.pt"],
], ids=["predict", "evaluate", "export"])
def test_cifar_commands_refuse_a_nan_checkpoint_naming_it(command, cifar_run, tmp_path, capsys):
    from PIL import Image

    def build(case, prev):
        name = poison(prev)
        image = tmp_path / "ship.png"
        Image.new("RGB", (32, 32), (20, 40, 200)).save(image)
        argv = [a.format(run=prev, image=image, case=case) for a in command]
        return argv, _culprit(prev, name)

    check_bad_input(build, cifar_run, tmp_path, capsys)


def test_the_api_refuses_an_infinite_cifar_checkpoint(cifar_run, tmp_path):
    import shutil

    from cnnlab import Classifier

    run = Path(shutil.copytree(cifar_run, tmp_path / "run"))
    name = poison(run, float("-inf"))
    with pytest.raises(CheckpointError, match=_culprit(run, name, "infinite values")):
        Classifier.from_run(run, device="cpu")


def test_the_api_raises_on_nan_logits_instead_of_a_class(cifar_run):
    from cnnlab import Classifier

    clf = Classifier.from_run(cifar_run, device="cpu")
    with torch.no_grad():
        next(clf.model.parameters()).fill_(float("nan"))  # weights broken after loading
    with pytest.raises(NonFiniteOutput, match=r"best\.pt \(fp32 on cpu\) gave NaN or infinite logits"):
        clf.predict([torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()])


# --- faces: verify, identify, export, the API ---------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["faces", "verify", "{run}", "{a}", "{b}"],
    ["faces", "identify", "{run}", "{a}", "--gallery", "{gallery}"],
    ["faces", "export", "{run}", "--format", "torchscript", "--out", "{case}/net.pt"],
], ids=["verify", "identify", "export"])
def test_face_commands_refuse_a_nan_checkpoint_naming_it(command, finished_run, tmp_path, capsys):
    def build(case, prev):
        name = poison(prev)
        argv = [a.format(run=prev, a=_image(prev), b=_image(prev, "Person_B"), gallery=prev.parent / "faces",
                         case=case) for a in command]
        return argv + (["--device", "cpu"] if command[1] != "export" else []), _culprit(prev, name)

    check_bad_input(build, finished_run, tmp_path, capsys)


def test_face_verifier_refuses_a_nan_checkpoint(finished_run, tmp_path):
    import shutil

    from cnnlab import FaceVerifier

    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    name = poison(run)
    with pytest.raises(CheckpointError, match=_culprit(run, name)):
        FaceVerifier.from_run(run, device="cpu")


def test_face_verifier_raises_on_nan_embeddings_instead_of_a_verdict(finished_run):
    from cnnlab import FaceVerifier

    fv = FaceVerifier.from_run(finished_run, device="cpu")
    with torch.no_grad():
        next(fv.model.parameters()).fill_(float("nan"))
    a = _image(finished_run)
    for call in (lambda: fv.verify(a, a), lambda: fv.embed(a),
                 lambda: fv.identify(a, finished_run.parent / "faces", k=2)):
        with pytest.raises(NonFiniteOutput, match="gave NaN or infinite embeddings"):
            call()


def test_resume_from_a_nan_last_checkpoint_is_refused_naming_it(cifar_run, tmp_path, capsys):
    """Training never writes such a checkpoint (a diverged epoch is not saved); a damaged one is not resumed."""
    import shutil

    run = Path(shutil.copytree(cifar_run, tmp_path / "run"))
    name = poison(run, checkpoint="last.pt")
    (run / "summary.json").unlink()  # unfinished, so --resume trains on from last.pt
    kept = {p: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    capsys.readouterr()
    assert main(["cifar", "train", "--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert _culprit(run, name, checkpoint="last.pt") in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in (run / "checkpoints").iterdir()} == kept
    assert not (run / "summary.json").exists()


# --- the service: an error, never a verdict ------------------------------------------------------------------------


@needs_extra
def test_serve_refuses_to_start_on_a_nan_checkpoint(finished_run, tmp_path):
    import shutil

    from cnnlab.serve.app import create_app

    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    name = poison(run)
    with pytest.raises(CheckpointError, match=_culprit(run, name)):
        create_app(run, device="cpu")


@needs_extra
def test_serve_answers_nan_embeddings_with_a_500_not_a_verdict(finished_run, caplog):
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    app = create_app(finished_run, device="cpu")
    with torch.no_grad():
        next(app.state.service.fv.model.parameters()).fill_(float("nan"))
    data = _image(finished_run).read_bytes()
    with TestClient(app, raise_server_exceptions=False) as client:
        for path, files in (("/verify", {"a": ("a.jpg", data), "b": ("b.jpg", data)}),
                            ("/embed", {"image": ("a.jpg", data)})):
            r = client.post(path, files=files)
            assert r.status_code == 500, r.text
            assert set(r.json()) == {"error"} and "NaN or infinite outputs" in r.json()["error"]
            assert str(finished_run) not in r.json()["error"]  # server paths stay in its log
    assert "gave NaN or infinite embeddings" in caplog.text and "best.pt" in caplog.text


@needs_extra
def test_serve_answers_nan_logits_with_a_500_not_a_class(cifar_run):
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    app = create_app(cifar_run, device="cpu")
    with torch.no_grad():
        next(app.state.service.classifier.model.parameters()).fill_(float("nan"))
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/predict", files={"images": ("x.png", image_bytes(size=(32, 32)))})
    assert r.status_code == 500 and "no answer" in r.json()["error"] and "predictions" not in r.json()
