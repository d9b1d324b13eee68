"""Every command checks what costs nothing (paths, run folders, option values) before what costs time.

Each case gives a command one bad, cheaply checked input and replaces the costly step behind it (opening
the run's network, decoding data, training, exporting, serving) with a spy: the command must answer with
one message naming the culprit, exit 2, leave nothing behind, and never reach the spy. ``torch.load`` is
spied on too, so no checkpoint is read either.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from cnnlab.commands.main import main


class Reached(AssertionError):
    pass


def _spy(name):
    def spy(*args, **kwargs):
        raise Reached(f"{name} was reached before a cheap check refused the input")
    return spy


# The costly step behind each command (module, attribute), all spied on in every case.
COSTLY = [
    ("torch", "load"),
    ("cnnlab.inference.cifar.Classifier", "from_run"),
    ("cnnlab.inference.faces.FaceVerifier", "from_run"),
    ("cnnlab.cifar.train", "train"),
    ("cnnlab.cifar.evaluate", "evaluate_run"),
    ("cnnlab.cifar.evaluate", "redraw_figures"),
    ("cnnlab.cifar.evaluate", "data_figures"),
    ("cnnlab.cifar.compare", "compare"),
    ("cnnlab.cifar.summary", "model_summary"),
    ("cnnlab.export", "export_run"),
    ("cnnlab.faces.train", "train"),
    ("cnnlab.faces.evaluate", "evaluate_pairs"),
    ("cnnlab.faces.analyze", "analyze"),
    ("cnnlab.faces.analyze", "redraw_figures"),
    ("cnnlab.faces.compare", "compare_runs"),
    ("cnnlab.faces.align_folder", "align_folder"),
    ("cnnlab.search", "search"),
    ("cnnlab.data.lfw", "download_lfw"),
    ("cnnlab.serve.faces.FaceService", "__init__"),
    ("cnnlab.serve.cifar.CifarService", "__init__"),
]


@pytest.fixture
def spied(monkeypatch):
    import importlib

    for module, attr in COSTLY:
        parent, last = module.rpartition(".")[::2]
        # "cnnlab.inference.cifar.Classifier": a class of a module; "cnnlab.cifar.train": a module.
        owner = getattr(importlib.import_module(parent), last) if last[0].isupper() else importlib.import_module(module)
        monkeypatch.setattr(owner, attr, _spy(f"{module}.{attr}"))


def _cifar_run(root):
    """A folder that passes for a CIFAR run: only its config.yaml is ever looked at here."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(f"blocks: AAAAAAAA\nwidth: 0.125\ndata_dir: {root.parent / 'cifar'}\n")
    return root


def _face_run(root):
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(f"backbone: resnet18\ndata_dir: {root.parent / 'faces'}\n")
    return root


def _image(path):
    Image.new("RGB", (32, 32), (90, 90, 90)).save(path)
    return path


def _cifar_data(tmp):
    from tests.conftest import write_cifar_batches

    return write_cifar_batches(tmp / "cifar").parent


# Each case: (tmp) -> (argv, text the message must hold)
CASES = {
    # cnnlab cifar ...
    "predict, missing image": lambda t: (
        ["cifar", "predict", str(_cifar_run(t / "run")), str(_image(t / "a.png")), str(t / "missing.png")],
        f"image {t / 'missing.png'} does not exist"),
    "predict, folder as image": lambda t: (
        ["cifar", "predict", str(_cifar_run(t / "run")), str(t)], f"image {t} is a folder, not a regular file"),
    "predict, k 0": lambda t: (
        ["cifar", "predict", str(_cifar_run(t / "run")), str(_image(t / "a.png")), "-k", "0"],
        "-k: expected a positive integer, got 0"),
    "predict, no run": lambda t: (
        ["cifar", "predict", str(t / "nope"), str(_image(t / "a.png"))],
        f"{t / 'nope'} does not exist; give the folder of a run made by cnnlab cifar train"),
    "predict, a face run": lambda t: (
        ["cifar", "predict", str(_face_run(t / "run")), str(_image(t / "a.png"))],
        "is a run of the face-verification study"),
    "evaluate, a folder that is no run": lambda t: (
        ["cifar", "evaluate", str(t)], f"{t} holds no cnnlab run (no config.yaml)"),
    "evaluate, a file": lambda t: (
        ["cifar", "evaluate", str(_image(t / "a.png"))], "is not a folder; give the folder of a run"),
    "evaluate, missing --data-dir": lambda t: (
        ["cifar", "evaluate", str(_cifar_run(t / "run")), "--data-dir", str(t / "none")],
        f"--data-dir {t / 'none'} does not exist (give --data-dir the folder holding CIFAR-10"),
    "evaluate, the run's data gone": lambda t: (
        ["cifar", "evaluate", str(_cifar_run(t / "run"))],
        f"was trained on {t / 'cifar'}, which does not exist here; give --data-dir"),
    "figures, no run": lambda t: (["cifar", "figures", str(t / "nope")], "does not exist; give the folder"),
    "data-figures, missing data": lambda t: (
        ["cifar", "data-figures", "--data-dir", str(t / "none"), "--out", str(t / "figs")],
        f"--data-dir {t / 'none'} does not exist"),
    "data-figures, out is a file": lambda t: (
        ["cifar", "data-figures", "--data-dir", str(_cifar_data(t)), "--out", str(_image(t / "a.png"))],
        "--out"),
    "data-figures, val-per-class 0": lambda t: (
        ["cifar", "data-figures", "--data-dir", str(_cifar_data(t)), "--out", str(t / "f"), "--val-per-class", "0"],
        "--val-per-class: expected a positive integer, got 0"),
    "train, missing data": lambda t: (
        ["cifar", "train", "--data-dir", str(t / "none"), "--out", str(t / "new")],
        f"--data-dir {t / 'none'} does not exist (add --download to fetch CIFAR-10 into it)"),
    "compare, negative tsne samples": lambda t: (
        ["cifar", "compare", "--blocks", "A,E", "--data-dir", str(_cifar_data(t)), "--out", str(t / "study"),
         "--tsne-samples", "-1"], "--tsne-samples"),
    "compare, out is a file": lambda t: (
        ["cifar", "compare", "--blocks", "A,E", "--out", str(_image(t / "a.png"))], "--out"),
    "summary, width 0": lambda t: (["cifar", "summary", "--width", "0"], "--width: expected a positive number"),
    "cifar export, no run": lambda t: (
        ["cifar", "export", str(t / "nope"), "--format", "onnx", "--out", str(t / "x.onnx")], "does not exist"),
    # cnnlab faces ...
    "verify, missing image": lambda t: (
        ["faces", "verify", str(_face_run(t / "run")), str(_image(t / "a.png")), str(t / "b.jpg")],
        f"image {t / 'b.jpg'} does not exist"),
    "verify, a cifar run": lambda t: (
        ["faces", "verify", str(_cifar_run(t / "run")), str(t / "a.jpg"), str(t / "b.jpg")],
        "is a run of the CIFAR-10 block study"),
    "identify, missing probe": lambda t: (
        ["faces", "identify", str(_face_run(t / "run")), str(t / "p.jpg"), "--gallery", str(t)],
        f"image {t / 'p.jpg'} does not exist"),
    "identify, missing gallery": lambda t: (
        ["faces", "identify", str(_face_run(t / "run")), str(_image(t / "p.png")), "--gallery", str(t / "g")],
        f"--gallery {t / 'g'} does not exist"),
    "identify, k 0": lambda t: (
        ["faces", "identify", str(_face_run(t / "run")), str(_image(t / "p.png")), "--gallery", str(t), "-k", "0"],
        "-k: expected a positive integer, got 0"),
    "faces evaluate, missing pairs": lambda t: (
        ["faces", "evaluate", str(_face_run(t / "run")), "--pairs", str(t / "pairs.txt")],
        f"--pairs {t / 'pairs.txt'} does not exist"),
    "faces evaluate, a folder that is no run": lambda t: (
        ["faces", "evaluate", str(t), "--pairs", str(t / "pairs.txt")], "holds no cnnlab run"),
    "analyze, queries 0": lambda t: (
        ["faces", "analyze", str(_face_run(t / "run")), "--queries", "0"], "--queries: expected a positive"),
    "analyze, missing data-dir": lambda t: (
        ["faces", "analyze", str(_face_run(t / "run")), "--data-dir", str(t / "none")],
        f"--data-dir {t / 'none'} does not exist"),
    "faces figures, no run": lambda t: (["faces", "figures", str(t / "nope")], "does not exist"),
    "faces compare, one run missing": lambda t: (
        ["faces", "compare", str(_face_run(t / "run")), str(t / "nope"), "--out", str(t / "cmp")],
        f"{t / 'nope'} does not exist"),
    "faces export, a cifar run": lambda t: (
        ["faces", "export", str(_cifar_run(t / "run")), "--format", "onnx", "--out", str(t / "x.onnx")],
        "is a run of the CIFAR-10 block study"),
    "faces train, missing data": lambda t: (
        ["faces", "train", "--data-dir", str(t / "none"), "--out", str(t / "new")],
        f"face folder {t / 'none'} does not exist"),
    "search, missing space": lambda t: (
        ["faces", "search", "--data-dir", str(t), "--space", str(t / "space.yaml"), "--out", str(t / "s")],
        f"--space {t / 'space.yaml'} does not exist"),
    "align, missing source": lambda t: (
        ["faces", "align", str(t / "photos"), str(t / "aligned")], f"face folder {t / 'photos'} does not exist"),
    "download, url of a missing folder": lambda t: (
        ["faces", "download", "--data-dir", str(t / "lfw"), "--url", (t / "mirror").as_uri()], "is no folder here"),
    # cnnlab serve
    "serve, port out of range": lambda t: (
        ["serve", str(_face_run(t / "run")), "--port", "70000"], "--port: expected a port number"),
    "serve, max-batch 0": lambda t: (
        ["serve", str(_face_run(t / "run")), "--max-batch", "0"], "--max-batch: expected a positive integer"),
    "serve, missing gallery": lambda t: (
        ["serve", str(_face_run(t / "run")), "--port", "0", "--gallery", str(t / "g")],
        f"--gallery {t / 'g'}: no such folder"),
    "serve, align on a cifar run": lambda t: (
        ["serve", str(_cifar_run(t / "run")), "--port", "0", "--align", "center"], "leave out --align"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_cheap_check_refuses_before_the_costly_step(name, spied, tmp_path, capsys):
    case = tmp_path / "case"
    case.mkdir()
    argv, culprit = CASES[name](case)
    made = sorted(case.rglob("*"))
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert culprit in err, err
    assert err.count("cnnlab: error: ") == 1 and "Traceback" not in err and "was reached" not in err
    assert sorted(case.rglob("*")) == made, "a refused command left files or folders behind"


def test_the_spies_do_catch_a_command_that_goes_on(spied, tmp_path):
    """The same table's spies stop a command whose inputs pass every cheap check: they are in its way."""
    run = _cifar_run(tmp_path / "run")
    with pytest.raises(Reached):
        main(["cifar", "predict", str(run), str(_image(tmp_path / "a.png"))])
    with pytest.raises(Reached):
        main(["faces", "verify", str(_face_run(tmp_path / "f")), str(tmp_path / "a.png"), str(tmp_path / "a.png")])
    with pytest.raises(Reached):
        torch.load(tmp_path / "a.png")
