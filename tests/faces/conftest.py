"""Face folders drawn by the tests: each person a colour and a shape, each image a small variation."""

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

SIDE = 48
SHAPES = ("ellipse", "rectangle", "triangle")
# Ten people with four images each, and three with a single image (impostors only).
PEOPLE = [(f"Person_{c}", 4) for c in "ABCDEFGHIJ"] + [("Solo_X", 1), ("Solo_Y", 1), ("Solo_Z", 1)]


def _draw(path: Path, person: int, image: int) -> None:
    bg = ((40 * person) % 200 + 30, (90 * person) % 200 + 30, (150 * person) % 200 + 30)
    fg = tuple(255 - c for c in bg)
    img = Image.new("RGB", (SIDE, SIDE), bg)
    d = ImageDraw.Draw(img)
    o = 2 * (image % 3)  # each image of a person shifted a little
    box = [10 + o, 10 + o, SIDE - 12 + o, SIDE - 12 + o]
    shape = SHAPES[person % 3]
    if shape == "ellipse":
        d.ellipse(box, fill=fg)
    elif shape == "rectangle":
        d.rectangle(box, fill=fg)
    else:
        d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fg)
    img.save(path, quality=95)


def make_people(root: Path, people=PEOPLE, draw=None) -> Path:
    """``root/<Name>/<Name>_NNNN.jpg``, LFW's naming; ``draw(path, person, image)`` may write another format."""
    draw = draw or _draw
    for p, (name, n) in enumerate(people):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(1, n + 1):
            draw(folder / f"{name}_{i:04d}.jpg", p, i)
    return root


def write_pairs(path: Path, folds: list[tuple[list, list]], view1: bool = False) -> Path:
    """An LFW pairs file: per fold, matched ``(name, i, j)`` then mismatched ``(n1, i, n2, j)`` lines."""
    per = len(folds[0][0])
    lines = [str(per)] if view1 else [f"{len(folds)}\t{per}"]
    for same, diff in folds:
        lines += ["\t".join(map(str, s)) for s in same] + ["\t".join(map(str, m)) for m in diff]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def face_dir(tmp_path) -> Path:
    return make_people(tmp_path / "faces")


@pytest.fixture(autouse=True)
def _fast_cpu():
    # Random-init networks in eval mode shrink activations to denormal floats, which are slow on CPU.
    old = torch.get_num_threads()
    torch.set_flush_denormal(True)
    yield
    torch.set_num_threads(old)


def tiny_options(data_dir: Path, **extra) -> list[str]:
    """CLI options for a run that takes seconds: tiny backbone, 32-pixel images, few epochs."""
    # The drawn "faces" are shapes, not faces: no detector finds them, so they are centre-cropped.
    opts = {"data-dir": data_dir, "backbone": "tiny", "weights": "none", "image-size": 32, "crop": 1.0, "align": "center",
            "embedding-dim": 16, "batch-size": 16, "epochs": 1, "val-fraction": 0.2, "test-fraction": 0.3,
            "eval-batch-size": 64, "device": "cpu", "lr": 0.01, **extra}
    out = []
    for k, v in opts.items():
        out += [f"--{k}", str(v)]
    return out


def tiny_config(data_dir: Path, **extra):
    from cnnlab.config import FaceTrainConfig

    kw = dict(data_dir=str(data_dir), backbone="tiny", weights="none", image_size=32, crop=1.0, align="center",
              embedding_dim=16,
              batch_size=16, epochs=1, val_fraction=0.2, test_fraction=0.3, eval_batch_size=64, device="cpu",
              lr=0.01)
    kw.update(extra)
    return FaceTrainConfig(**kw)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished 2-epoch tiny run (read-only: copy it before changing anything in it)."""
    from cnnlab.faces.train import train

    base = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp:
        # The same cache folder as the per-test fixture in tests/conftest.py.
        mp.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        torch.set_flush_denormal(True)
        faces = make_people(base / "faces")
        train(tiny_config(faces, epochs=2), base / "run", progress=False)
    return base / "run"


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A writable copy of the finished run (its data folder stays where it was)."""
    import shutil

    return Path(shutil.copytree(finished_run, tmp_path / "run"))
