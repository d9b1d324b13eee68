"""``from cnnlab import Classifier`` and ``cnnlab cifar predict``, and ``cnnlab cifar export``, on a tiny CIFAR run."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cifar.train import train
from cnnlab.commands.main import main
from cnnlab.config import CifarTrainConfig
from cnnlab.errors import DataError
from tests.conftest import CLASSES, write_cifar_batches

# Floats compared across paths or with a reference: run again with the CPU kernels limited to AVX2 (.ci/run).
pytestmark = pytest.mark.numerics


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """A tiny finished CIFAR run and three image files (one 32x32 PNG, one larger JPEG, one grayscale)."""
    root = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        data = write_cifar_batches(root / "data")
        cfg = CifarTrainConfig(data_dir=str(data), blocks="E", width=0.125, epochs=1, batch_size=32,
                               eval_batch_size=16, lr=0.02, precision="fp32")
        train(cfg, root / "run", progress=False)
    rng = np.random.default_rng(0)
    images = [root / "a.png", root / "b.jpg", root / "c.png"]
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images[0])
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(images[1])
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), mode="L").save(images[2])
    return root / "run", images


@pytest.fixture(scope="module")
def classifier(cifar_run):
    from cnnlab import Classifier

    return Classifier.from_run(cifar_run[0], device="cpu")


def test_predict_gives_the_top_k_classes_by_probability(classifier, cifar_run):
    _, images = cifar_run
    results = classifier.predict(images, k=3)
    assert [r["image"] for r in results] == [str(p) for p in images]
    tops = [r["top"] for r in results]
    assert len(tops) == 3 and all(len(t) == 3 for t in tops)
    p = classifier.probabilities(images)
    assert p.shape == (3, 10) and torch.allclose(p.sum(1), torch.ones(3), atol=1e-5)
    for row, top in zip(p, tops):
        assert [t["class"] for t in top] == [CLASSES[i] for i in torch.argsort(row, descending=True)[:3]]
        assert [t["probability"] for t in top] == pytest.approx(sorted(row.tolist(), reverse=True)[:3])
    assert len(classifier.predict(images[0], k=50)["top"]) == 10  # k beyond the classes: all of them


def test_paths_pil_images_and_arrays_predict_alike(classifier, cifar_run):
    path = cifar_run[1][1]
    pil = Image.open(path)
    p = classifier.probabilities([path, pil, np.asarray(pil)])
    assert torch.allclose(p, p[:1].expand_as(p))
    with pytest.raises(DataError, match=r"image 0: expected a uint8 array of shape \(H, W, 3\)"):
        classifier.predict(np.zeros((4, 4, 4), dtype=np.uint8))


def test_one_image_or_a_list_predicts_as_the_json_of_the_predict_command(cifar_run, classifier, capsys):
    run, images = cifar_run
    path = str(images[1])
    assert main(["cifar", "predict", str(run), path, "-k", "3", "--json", "--device", "cpu"]) == 0
    (printed,) = json.loads(capsys.readouterr().out)
    one = classifier.predict(path, k=3)
    assert set(one) == {"image", "top"} and one["image"] == path
    assert [set(t) for t in one["top"]] == [{"class", "probability"}] * 3
    # The same image through the same network, in one process: the same numbers, as JSON carries them.
    assert json.loads(json.dumps(one)) == printed
    assert classifier.predict([path], k=3) == [one]
    assert classifier.predict(images[1], k=3) == one  # a Path is given back as the str of it
    pil = classifier.predict(Image.open(path), k=3)  # an image that is no file has no name
    assert pil["image"] is None and [t["class"] for t in pil["top"]] == [t["class"] for t in one["top"]]


def test_the_predict_command(cifar_run, classifier, capsys, tmp_path):
    run, images = cifar_run
    assert main(["cifar", "predict", str(run), *map(str, images), "-k", "2", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == classifier.predict([str(p) for p in images], k=2)
    assert main(["cifar", "predict", str(run), str(images[0]), "-k", "1"]) == 0
    top = classifier.predict(images[0], k=1)["top"][0]
    assert capsys.readouterr().out == f"{images[0]}: {top['class']} {top['probability']:.3f}\n"
    assert main(["cifar", "predict", str(run), str(tmp_path / "nope.png")]) == 2
    assert "nope.png does not exist" in capsys.readouterr().err
    assert main(["cifar", "predict", str(run), str(images[0]), "-k", "0"]) == 2
    assert "-k: expected a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_and_names_the_classes(cifar_run, classifier, tmp_path, fmt):
    from cnnlab.export import read_metadata

    run, images = cifar_run
    out = tmp_path / f"net.{fmt}"
    assert main(["cifar", "export", str(run), "--format", fmt, "--out", str(out)]) == 0
    x = classifier.preprocess(images)  # uint8 (3, 3, 32, 32)
    expected = torch.log_softmax(torch.log(classifier.probabilities(images)), 1)
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        (logits,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
        logits = torch.from_numpy(logits)
    else:
        logits = torch.jit.load(str(out), map_location="cpu")(x)
    torch.testing.assert_close(torch.log_softmax(logits, 1), expected, atol=1e-4, rtol=0)
    meta = read_metadata(out)
    assert meta["study"] == "cifar" and meta["classes"] == list(CLASSES) and meta["format"] == fmt
    assert meta["input"]["shape"] == ["batch", 3, 32, 32] and meta["input"]["dtype"] == "uint8"
    assert meta["output"]["shape"] == ["batch", 10]


def test_a_face_run_is_refused_naming_its_study(cifar_run, tmp_path, capsys):
    assert main(["faces", "export", str(cifar_run[0]), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "cnnlab cifar" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
