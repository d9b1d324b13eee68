"""``from cnnlab import FaceVerifier``: paths, PIL images and arrays give the CLI's answers."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.commands.main import main
from cnnlab.errors import CnnlabError, DataError
from tests.conftest import ACROSS_PATHS, NEAR_ZERO_DISTANCE

# Floats compared across paths or with a reference: run again with the CPU kernels limited to AVX2 (.ci/run).
pytestmark = pytest.mark.numerics


def _faces(finished_run):
    return finished_run.parent / "faces"


@pytest.fixture(scope="module")
def verifier(finished_run):
    from cnnlab import FaceVerifier

    return FaceVerifier.from_run(finished_run, device="cpu")


def test_embed_takes_paths_pil_images_and_arrays_alike(verifier, finished_run):
    path = _faces(finished_run) / "Person_A" / "Person_A_0001.jpg"
    pil = Image.open(path)
    arr = np.asarray(pil.convert("RGB"))
    e = verifier.embed([path, str(path), pil, arr])
    assert e.shape == (4, 16) and e.dtype == torch.float32
    assert torch.allclose(e, e[:1].expand_as(e), atol=1e-6)
    assert torch.allclose(verifier.embed(path), e[:1], atol=ACROSS_PATHS)  # one image: a batch of one


def test_a_pil_image_with_an_exif_orientation_is_embedded_upright(verifier, finished_run):
    """A photo opened with PIL keeps its EXIF orientation: it is embedded as a file would be, upright."""
    path = _faces(finished_run) / "Person_A" / "Person_A_0001.jpg"
    upright_image = Image.open(path).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    stored = upright_image.transpose(Image.Transpose.ROTATE_270)  # as a phone stores it, sideways
    stored.getexif()[0x0112] = 8  # "rotate 90 degrees counter-clockwise to view"
    assert torch.equal(verifier.preprocess(stored), verifier.preprocess(upright_image))
    # the same pixels without the tag stay sideways: the tag is what turned them
    assert not torch.equal(verifier.preprocess(stored.copy()), verifier.preprocess(upright_image))


def test_embeddings_are_those_training_saved(verifier, finished_run):
    saved = torch.load(finished_run / "test_embeddings.pt", weights_only=True)
    e = verifier.embed([_faces(finished_run) / f for f in saved["files"][:3]])
    assert torch.allclose(e, saved["embeddings"][:3], atol=ACROSS_PATHS)


def test_verify_matches_the_cli(verifier, finished_run, capsys):
    a = _faces(finished_run) / "Person_A" / "Person_A_0001.jpg"
    b = _faces(finished_run) / "Person_B" / "Person_B_0002.jpg"
    r = verifier.verify(a, Image.open(b))
    assert main(["faces", "verify", str(finished_run), str(a), str(b), "--json", "--device", "cpu"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert r["distance"] == pytest.approx(cli["distance"], abs=ACROSS_PATHS)
    assert r["threshold"] == cli["threshold"] == json.loads((finished_run / "summary.json").read_text())["threshold"]
    assert r["same_person"] == (r["distance"] <= r["threshold"])


def _as_printed(api, cli):
    """``api`` (a result of the Python API) is what ``cli`` (the command's --json) holds: the same keys, lists
    and values, numbers within the tolerance of two loads of one run."""
    if isinstance(api, dict):
        assert isinstance(cli, dict) and list(api) == list(cli)
        for k in api:
            _as_printed(api[k], cli[k])
    elif isinstance(api, (list, tuple)):
        assert isinstance(cli, list) and len(api) == len(cli)
        for a, c in zip(api, cli):
            _as_printed(a, c)
    elif isinstance(api, float):
        assert api == pytest.approx(cli, abs=ACROSS_PATHS)
    else:
        assert api == cli


def test_verify_and_identify_give_what_their_commands_print_as_json(verifier, finished_run, capsys):
    faces = _faces(finished_run)
    a, b = faces / "Person_A" / "Person_A_0001.jpg", faces / "Person_B" / "Person_B_0002.jpg"
    assert main(["faces", "verify", str(finished_run), str(a), str(b), "--json", "--device", "cpu"]) == 0
    _as_printed(verifier.verify(a, b), json.loads(capsys.readouterr().out))
    assert main(["faces", "identify", str(finished_run), str(a), "--gallery", str(faces), "-k", "3", "--json",
                 "--device", "cpu"]) == 0
    _as_printed(verifier.identify_faces(a, faces, k=3), json.loads(capsys.readouterr().out))


def test_identify_finds_the_probes_own_person(verifier, finished_run):
    probe = np.asarray(Image.open(_faces(finished_run) / "Person_C" / "Person_C_0003.jpg").convert("RGB"))
    rows = verifier.identify(probe, _faces(finished_run), k=2)
    assert [r["rank"] for r in rows] == [1, 2]
    assert rows[0]["name"] == "Person_C" and rows[0]["image"] == "Person_C/Person_C_0003.jpg"
    assert rows[0]["distance"] == pytest.approx(0.0, abs=NEAR_ZERO_DISTANCE) and rows[0]["same_person"]
    with pytest.raises(CnnlabError, match="^k: expected a positive integer"):
        verifier.identify(probe, _faces(finished_run), k=0)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((8, 8, 3), dtype=np.float32), r"image 0: expected a uint8 array of shape \(H, W, 3\).*float32"),
    (np.zeros((8, 8), dtype=np.uint8), r"image 0: .*uint8 \(8, 8\)"),
    (42, "image 0: expected a file path, a PIL image or a uint8 numpy array"),
    ([], "non-empty list"),
])
def test_bad_images_are_named(verifier, bad, message):
    with pytest.raises(DataError, match=message):
        verifier.embed([bad] if not isinstance(bad, list) else bad)


def test_a_missing_file_is_named(verifier, tmp_path):
    with pytest.raises(DataError, match="nope.jpg does not exist"):
        verifier.verify(tmp_path / "nope.jpg", tmp_path / "nope.jpg")


def test_importing_cnnlab_does_not_import_the_models():
    code = ("import sys, cnnlab; assert not {'cnnlab.api', 'cnnlab.inference', 'torch'} & set(sys.modules); "
            "from cnnlab import FaceVerifier, Classifier; import cnnlab.api as api; "
            "assert (api.FaceVerifier, api.Classifier) == (FaceVerifier, Classifier); "
            "print(FaceVerifier.__module__, Classifier.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["cnnlab.inference.faces", "cnnlab.inference.cifar"]
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        import cnnlab

        cnnlab.Nope  # noqa: B018


def test_the_readme_example_runs(finished_run, capsys):
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    code = re.search(r"<!-- python-api-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    faces = _faces(finished_run)
    for name, path in {"runs/triplet": finished_run, "data/office": faces,
                       "a.jpg": faces / "Person_A" / "Person_A_0001.jpg",
                       "b.jpg": faces / "Person_A" / "Person_A_0002.jpg",
                       "probe.jpg": faces / "Person_C" / "Person_C_0003.jpg"}.items():
        code = code.replace(f'"{name}"', repr(str(path)))
    code = code.replace('device="auto"', 'device="cpu"')
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("distance ") and "same person: " in lines[0]
    assert len(lines) == 6 and lines[1].startswith("1 Person_C 0.0 True Person_C/Person_C_0003.jpg")
