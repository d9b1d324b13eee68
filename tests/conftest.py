import os
from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from several threads, and OpenMP threads competing with
# other processes for two cores can make a step 20x slower. One thread keeps the
# suite fast and its timing steady.
torch.set_num_threads(1)

# Floats computed along different paths (a batch of one against a batch of four, the service's batcher
# against the API, another thread count) differ in their last bits: oneDNN and ATen choose kernels per
# shape and per CPU kind (AVX2, AVX-512, AMX) and sum in another order. Through a network that is about
# 1e-5 on embeddings and probabilities of unit scale (measured: 4.3e-5 on the distance between an image
# and itself embedded in two batch sizes, on an AVX2-only CPU; 0 on an AVX-512 one). ACROSS_PATHS leaves
# room above that and is still far below any threshold or ranking a test decides on. A distance near 0
# comes through a square root, which magnifies such noise: NEAR_ZERO_DISTANCE.
ACROSS_PATHS = 1e-4
NEAR_ZERO_DISTANCE = 1e-3


def _study_recipe() -> dict:
    from cnnlab.recipes import load_recipe

    return {**load_recipe("study").options, "recipe": "study"}


STUDY = _study_recipe()
"""The study recipe's training choices (exponential schedule, the study's augmentation, no label smoothing), for
tests whose reference is that training: ``CifarTrainConfig(**{**STUDY, ...})``."""


# Real-data samples live beside a checkout in some setups (../shared/datasets);
# CNNLAB_DATASETS points elsewhere. Tests that use them skip when absent.
_SHARED = Path(os.environ.get("CNNLAB_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


@pytest.fixture
def shared_datasets() -> Path:
    if not _SHARED.is_dir():
        pytest.skip(f"real-data samples not found at {_SHARED}")
    return _SHARED


class TouchesOnLoad:
    """The payload of a malicious pickle: unpickling it runs ``touch marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pytest_configure(config):
    # Decoded-data caches go to a temporary folder for the whole session (module-scoped
    # fixtures included), never the user's ~/.cache.
    import tempfile

    os.environ["CNNLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="cnnlab-test-cache-")
    os.environ["MPLBACKEND"] = "Agg"


def pytest_unconfigure(config):
    import shutil

    shutil.rmtree(os.environ.get("CNNLAB_CACHE_DIR", ""), ignore_errors=True)


# --- tiny CIFAR-10 data, written by the tests themselves --------------------------------

import pickle  # noqa: E402

import numpy as np  # noqa: E402

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _class_images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images a small network can tell apart: each class a colour, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    base = rng.integers(30, 225, size=(10, 3, 1, 1))
    noise = rng.integers(-30, 30, size=(len(labels), 3, 32, 32))
    images = np.clip(base[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels


def write_cifar_batches(root: Path, n_per_class: int = 4, seed: int = 0) -> Path:
    """Official layout: cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x, y = _class_images(n_per_class, seed + i)
        batch = {b"batch_label": name.encode(), b"labels": y.tolist(), b"data": x.reshape(len(x), -1),
                 b"filenames": [f"{j}.png".encode() for j in range(len(y))]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}, f, protocol=2)
    return folder


def write_cifar_folders(root: Path, n_train: int = 10, n_test: int = 4, seed: int = 0, ext: str = "png") -> Path:
    """Image-folder layout: train/<class>/NNNN.png, test/<class>/NNNN.png."""
    from PIL import Image

    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 100)):
        x, y = _class_images(n, s)
        for j, (img, label) in enumerate(zip(x, y)):
            d = root / split / CLASSES[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(d / f"{j:04d}.{ext}")
    return root


@pytest.fixture
def cifar_batches(tmp_path) -> Path:
    """A --data-dir holding tiny official batches (40 train images a class in all, 4 test)."""
    root = tmp_path / "cifar-batches"
    write_cifar_batches(root)
    return root


@pytest.fixture
def cifar_folders(tmp_path) -> Path:
    """A --data-dir holding tiny train/ and test/ image folders (10 + 4 a class)."""
    return write_cifar_folders(tmp_path / "cifar-folders")


def pytest_addoption(parser):
    parser.addoption("--kill-points", type=int, default=3,
                     help="how many SIGKILL points the crash/resume test tries (default 3; 10 for a full check)")


class StoppedAfterEpoch(Exception):
    """Raised by :func:`train_until` once the run's last.pt holds the epoch asked for."""


def train_until(train, cfg, out, epoch: int) -> None:
    """Run the CIFAR ``train(cfg, out)`` and stop it right after ``epoch`` is checkpointed, as a crash would."""
    import cnnlab.engine as engine

    def stop(row):
        if row["epoch"] == epoch:
            raise StoppedAfterEpoch

    real_fit = engine.fit
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("cnnlab.cifar.train.fit", lambda *a, **k: real_fit(*a, **k, on_epoch=stop))
        with pytest.raises(StoppedAfterEpoch):
            train(cfg, out, progress=False)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module, so a test calls its functions and ``main``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
