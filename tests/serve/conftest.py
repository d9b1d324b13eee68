"""A tiny finished face run with its gallery, a tiny CIFAR run, and their apps behind FastAPI's test client."""

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_cifar_batches
from tests.faces.conftest import _fast_cpu, finished_run  # noqa: F401 -- the face tests' fixtures, reused

# Tests of the app need the serve extra and httpx (FastAPI's TestClient); the batcher, the upload decoding and
# the message that names the missing extra are tested without them.
needs_extra = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn", "multipart", "httpx")),
    reason="cnnlab serve's tests need the serve extra and httpx: pip install -e '.[test]'")


def faces_of(run: Path) -> Path:
    """The people folder the finished face run trained on: the tests' gallery too."""
    return run.parent / "faces"


def image_bytes(path: Path | None = None, fmt: str = "PNG", size=(40, 40), seed: int = 0) -> bytes:
    """An image file's bytes: ``path`` re-encoded as ``fmt``, or random pixels of ``size``."""
    if path is not None:
        img = Image.open(path).convert("RGB")
    else:
        img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def cifar_run(tmp_path_factory) -> Path:
    """A tiny finished CIFAR run (read-only)."""
    from cnnlab.cifar.train import train
    from cnnlab.config import CifarTrainConfig

    root = tmp_path_factory.mktemp("serve-cifar")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        data = write_cifar_batches(root / "data")
        cfg = CifarTrainConfig(data_dir=str(data), blocks="E", width=0.125, epochs=1, batch_size=32,
                               eval_batch_size=16, lr=0.02, precision="fp32", device="cpu")
        train(cfg, root / "run", progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def face_client(finished_run):
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    app = create_app(finished_run, gallery=faces_of(finished_run), device="cpu", max_upload_bytes=200_000)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def cifar_client(cifar_run):
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    with TestClient(create_app(cifar_run, device="cpu"), raise_server_exceptions=False) as client:
        yield client


# --- the real service, on a free localhost port -----------------------------------------------------------

import contextlib  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

_SRC = Path(__file__).resolve().parents[2] / "src"


@contextlib.contextmanager
def running_service(*args, tmp_path: Path, timeout: float = 180):
    """``cnnlab serve ARGS --port 0`` in a process of its own; yields its URL, stops it with Ctrl-C (SIGINT)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_SRC), os.environ.get("PYTHONPATH")]))}
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", *map(str, args), "--port", "0",
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    found: list[str] = []

    def read():
        for line in proc.stdout:
            m = re.search(r"at (http://\S+/) ", line)
            if m:
                found.append(m.group(1))
                break

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    try:
        if not found:
            proc.kill()
            log.seek(0)
            pytest.fail(f"cnnlab serve did not start within {timeout} s (exit {proc.poll()}): {log.read()[-2000:]}")
        yield found[0]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
