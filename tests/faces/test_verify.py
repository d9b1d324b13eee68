import json

import pytest
import torch
from PIL import Image

from cnnlab.commands.main import main
from cnnlab.data.align import NoFace
from cnnlab.errors import DataError
from cnnlab.inference.faces import FaceVerifier
from cnnlab.inference.images import load_face, to_tensor
from tests.faces.conftest import tiny_config
from tests.conftest import ACROSS_PATHS, NEAR_ZERO_DISTANCE

# Floats compared across paths or with a reference: run again with the CPU kernels limited to AVX2 (.ci/run).
pytestmark = pytest.mark.numerics


def _faces(finished_run):
    return finished_run.parent / "faces"


def test_verify_json_on_two_images(finished_run, capsys):
    a = _faces(finished_run) / "Person_A" / "Person_A_0001.jpg"
    b = _faces(finished_run) / "Person_B" / "Person_B_0002.jpg"
    assert main(["faces", "verify", str(finished_run), str(a), str(b), "--json", "--device", "cpu"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r) == {"distance", "threshold", "same_person", "faces", "compared"}
    assert r["faces"] == [None, None]  # the run centre-crops: no face was detected
    summary = json.loads((finished_run / "summary.json").read_text())
    assert r["threshold"] == summary["threshold"]
    assert r["same_person"] == (r["distance"] <= r["threshold"])
    assert FaceVerifier.from_run(finished_run, device="cpu").verify(a, a)["distance"] == pytest.approx(0.0, abs=NEAR_ZERO_DISTANCE)


def test_verify_distance_matches_the_saved_test_embeddings(finished_run):
    saved = torch.load(finished_run / "test_embeddings.pt", weights_only=True)
    f0, f1 = saved["files"][0], saved["files"][1]
    r = FaceVerifier.from_run(finished_run, device="cpu").verify(_faces(finished_run) / f0, _faces(finished_run) / f1)
    expected = float((saved["embeddings"][0] - saved["embeddings"][1]).norm())
    assert r["distance"] == pytest.approx(expected, abs=ACROSS_PATHS)


def test_verify_plain_output_and_a_missing_image(finished_run, tmp_path, capsys):
    a = _faces(finished_run) / "Person_A" / "Person_A_0001.jpg"
    assert main(["faces", "verify", str(finished_run), str(a), str(a)]) == 0
    assert "same person" in capsys.readouterr().out
    assert main(["faces", "verify", str(finished_run), str(a), str(tmp_path / "nope.jpg")]) == 2
    assert "nope.jpg does not exist" in capsys.readouterr().err


def test_images_are_decoded_as_in_training(tmp_path):
    img = Image.new("L", (60, 40), 128)  # grayscale, not square
    img.save(tmp_path / "g.png")
    cfg = tiny_config(tmp_path, image_size=32, crop=0.5)
    p = load_face(tmp_path / "g.png", cfg)
    x = to_tensor(p.image)
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and int(x.float().mean()) == 128
    assert p.how == "center" and p.face is None
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        load_face(tmp_path / "bad.jpg", cfg)
    # A run that detects faces refuses an input without one, naming it (auto has no fallback for one input).
    for align in ("auto", "detect"):
        with pytest.raises(NoFace, match=r"g\.png: no face found; .*centre crop"):
            load_face(tmp_path / "g.png", cfg, align)


def test_identify_lists_the_nearest_people_and_caches_the_gallery(finished_run, capsys, monkeypatch):
    probe = _faces(finished_run) / "Person_C" / "Person_C_0003.jpg"
    rows = FaceVerifier.from_run(finished_run, device="cpu").identify(probe, _faces(finished_run), k=4)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["name"] == "Person_C" and rows[0]["distance"] == pytest.approx(0.0, abs=NEAR_ZERO_DISTANCE)
    assert rows[0]["image"] == "Person_C/Person_C_0003.jpg" and rows[0]["same_person"]
    assert [r["distance"] for r in rows] == sorted(r["distance"] for r in rows)
    assert len({r["name"] for r in rows}) == 4

    # Second call: the gallery embeddings come from the cache, the model embeds only the probe.
    from cnnlab.inference import runs

    calls = []
    real = runs.infer_embeddings
    monkeypatch.setattr(runs, "infer_embeddings", lambda model, x, **kw: calls.append(len(x)) or real(model, x, **kw))
    assert main(["faces", "identify", str(finished_run), str(probe), "--gallery", str(_faces(finished_run)),
                 "-k", "2", "--json"]) == 0
    assert calls == [1]
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1 and out[0]["face"] is None  # one answer, for the one (centre-cropped) face
    assert [r["name"] for r in out[0]["matches"]] == [r["name"] for r in rows[:2]]


def test_identify_refuses_a_bad_k(finished_run, capsys):
    probe = _faces(finished_run) / "Person_C" / "Person_C_0003.jpg"
    assert main(["faces", "identify", str(finished_run), str(probe), "--gallery", str(_faces(finished_run)),
                 "-k", "0"]) == 2
    assert "-k" in capsys.readouterr().err


def test_a_gallery_cache_naming_other_people_is_rebuilt(finished_run, tmp_path, monkeypatch, caplog):
    """A cache with other names once made identify answer with a person who is not in the gallery."""
    import logging

    from cnnlab.data import cache

    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    probe = _faces(finished_run) / "Person_C" / "Person_C_0003.jpg"
    first = FaceVerifier.from_run(finished_run, device="cpu").identify(probe, _faces(finished_run), k=3)
    (path,) = (tmp_path / "cache" / "faces-gallery").iterdir()
    record = torch.load(path, weights_only=True)
    data = record["data"]
    data["names"] = [f"Stranger_{i}" for i in range(len(data["names"]))]
    record.update(description=cache.describe(data), digest=cache.digest(data))  # self-consistent, yet wrong
    torch.save(record, path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cnnlab"):
        again = FaceVerifier.from_run(finished_run, device="cpu").identify(probe, _faces(finished_run), k=3)
    assert "gallery cache" in caplog.text and "not those of the gallery" in caplog.text
    assert [r["name"] for r in again] == [r["name"] for r in first] and again[0]["name"] == "Person_C"


@pytest.mark.parametrize("cpu_bf16, expected", [(True, ("bf16", True)), (False, ("fp32", True))])


def test_verify_embeds_in_the_runs_precision_unless_this_device_emulates_it(run_copy, monkeypatch, cpu_bf16,
                                                                            expected):
    from cnnlab import runtime
    from cnnlab.inference import runs
    from cnnlab.run import RunDir

    cpu = runtime.Hardware("cpu", "test CPU", cpu_bf16=cpu_bf16,
                           cpu_features=("AVX2", "AVX512") + (("AVX512-BF16",) if cpu_bf16 else ()))
    monkeypatch.setattr(runs, "probe_hardware", lambda device: cpu)
    monkeypatch.setattr(runtime, "probe_hardware", lambda device: cpu)
    run = RunDir(run_copy)
    run.update_summary(precision="bf16", channels_last=True)
    _, cfg = runs.load_face_network(run, "best", torch.device("cpu"))
    assert runs.embedding_precision(run, cfg, torch.device("cpu")) == expected
