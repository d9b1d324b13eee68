"""``cnnlab faces export``: the file embeds uint8 images as the run does, and says how to feed it."""

import json

import numpy as np
import pytest
import torch

from cnnlab.commands.main import main
from cnnlab.export import read_metadata

# Floats compared across paths or with a reference: run again with the CPU kernels limited to AVX2 (.ci/run).
pytestmark = pytest.mark.numerics


def _batch(finished_run):
    """Five faces as uint8 (5, 3, S, S), decoded as in training, and their fp32 PyTorch embeddings."""
    from cnnlab import FaceVerifier
    from cnnlab.faces.train import infer_embeddings

    fv = FaceVerifier.from_run(finished_run, device="cpu")
    x = fv.preprocess(sorted((finished_run.parent / "faces").rglob("*.jpg"))[:5])
    return x, infer_embeddings(fv.model, x, device=torch.device("cpu"), precision="fp32")


def _check_metadata(meta, finished_run, fmt):
    summary = json.loads((finished_run / "summary.json").read_text())
    assert meta["study"] == "faces" and meta["format"] == fmt
    assert meta["threshold"] == summary["threshold"]
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["shape"] == ["batch", 3, 32, 32]
    assert meta["input"]["normalized_inside"] and len(meta["input"]["mean"]) == len(meta["input"]["std"]) == 3
    assert meta["preprocessing"]["crop"] == 1.0 and meta["preprocessing"]["image_size"] == 32
    assert meta["l2_normalized"] is True and meta["distance"] == "euclidean"
    assert meta["output"] == {"name": "embeddings", "shape": ["batch", 16]}


def test_onnx_export_matches_pytorch_with_onnxruntime(finished_run, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "sub" / "faces.onnx"
    assert main(["faces", "export", str(finished_run), "--format", "onnx", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    x, expected = _batch(finished_run)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    for n in (5, 1):  # the batch axis is dynamic
        (got,) = session.run(None, {"images": x[:n].numpy()})
        np.testing.assert_allclose(got, expected[:n].numpy(), atol=1e-4, rtol=0)
    _check_metadata(read_metadata(out), finished_run, "onnx")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_matches_pytorch(finished_run, tmp_path):
    out = tmp_path / "faces.pt"
    assert main(["faces", "export", str(finished_run), "--format", "torchscript", "--out", str(out)]) == 0
    x, expected = _batch(finished_run)
    net = torch.jit.load(str(out), map_location="cpu")
    torch.testing.assert_close(net(x), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(net(x[:1]), expected[:1], atol=1e-4, rtol=0)
    files = {"cnnlab.json": ""}
    torch.jit.load(str(out), _extra_files=files)
    assert json.loads(files["cnnlab.json"]) == read_metadata(out)
    _check_metadata(read_metadata(out), finished_run, "torchscript")


def test_an_unfinished_run_is_refused_and_the_old_file_kept(run_copy, tmp_path, capsys):
    out = tmp_path / "faces.onnx"
    out.write_bytes(b"an earlier export")
    summary = json.loads((run_copy / "summary.json").read_text())
    summary.pop("threshold")
    (run_copy / "summary.json").write_text(json.dumps(summary))
    assert main(["faces", "export", str(run_copy), "--format", "onnx", "--out", str(out), "--force"]) == 2
    assert "no decision threshold" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier export"
    with pytest.raises(SystemExit) as e:
        main(["faces", "export", str(run_copy), "--format", "tflite", "--out", str(out)])
    assert e.value.code == 2 and "--format: invalid choice: 'tflite'" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier export"
