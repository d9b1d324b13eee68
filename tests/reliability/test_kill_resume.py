"""Kill a training process with SIGKILL at random points, resume it, and check that
the run ends exactly where an uninterrupted run ends, with every checkpoint loadable.

Half of the kill points are random moments; the other half wait for a checkpoint
write in progress (its temporary file) and kill then. `--kill-points N` sets how
many (default 3; the full check is 10).
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab.files import load_checkpoint
from cnnlab.run import RunDir

TIMING = ("train_seconds", "seconds", "images_per_second")  # the only columns allowed to differ


def _env(tmp_path):
    return {**os.environ, "OMP_NUM_THREADS": "1", "CNNLAB_CACHE_DIR": str(tmp_path / "cache")}


def _cifar_args(data, out):
    return [sys.executable, "-m", "cnnlab", "cifar", "train", "--blocks", "D", "--width", "0.125", "--epochs", "4",
            "--batch-size", "16", "--data-dir", str(data), "--device", "cpu", "--out", str(out)]


def _faces_args(data, out, *extra):
    from tests.faces.conftest import tiny_options

    return [sys.executable, "-m", "cnnlab", "faces", "train", *tiny_options(data, epochs=4, **{"batch-size": 8}),
            *extra, "--out", str(out)]


def _cosface_args(data, out):
    """A margin loss: its per-person weights and their optimizer state live in last.pt beside the network."""
    return _faces_args(data, out, "--loss", "cosface", "--head", "bnneck")


ARGS = {"cifar": _cifar_args, "faces": _faces_args, "faces-cosface": _cosface_args}


def _data(study, tmp_path):
    if study == "cifar":
        from tests.conftest import write_cifar_batches

        return write_cifar_batches(tmp_path / "cifar").parent
    from tests.faces.conftest import make_people

    return make_people(tmp_path / "faces")


def _run_to_end(cmd, env):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]


def _kill_when(proc, out: Path, deadline: float, nth_write: int | None) -> str:
    """SIGKILL ``proc`` at ``deadline``, or with ``nth_write`` while its n-th checkpoint is half written."""
    ckpts, seen = out / "checkpoints", set()
    while proc.poll() is None:
        if nth_write is not None:
            if ckpts.is_dir():
                seen |= {p.name for p in ckpts.iterdir() if p.suffix == ".tmp"}
                if len(seen) >= nth_write:
                    proc.send_signal(signal.SIGKILL)
                    return f"during checkpoint write {nth_write}"
        elif time.monotonic() >= deadline:
            proc.send_signal(signal.SIGKILL)
            return "at a random moment"
        time.sleep(0.0002 if nth_write is not None else 0.01)
    return "too late: the run had finished"


@pytest.mark.parametrize("study", list(ARGS))
def test_sigkill_then_resume_equals_the_uninterrupted_run(study, tmp_path, request):
    env = _env(tmp_path)
    data = _data(study, tmp_path)
    train_args = ARGS[study]
    ref = tmp_path / "reference"
    t0 = time.monotonic()
    _run_to_end(train_args(data, ref), env)
    duration = time.monotonic() - t0
    expected = RunDir(ref).read_metrics()
    score = "test_accuracy" if study == "cifar" else "roc_auc"
    expected_test = RunDir(ref).read_summary()[score]

    rng = random.Random(1234)
    points = request.config.getoption("--kill-points")
    outcomes = []
    for k in range(points):
        # 4 epochs write last.pt 4 times and best.pt 1 to 4 times; aim at one of the first 4 writes.
        nth = rng.randint(1, 4) if k % 2 == 1 else None
        delay = rng.uniform(0.5, 0.6 * duration)
        for attempt in range(3):  # a run faster than the reference may end first: try earlier
            out = tmp_path / f"killed-{k}-{attempt}"
            proc = subprocess.Popen(train_args(data, out), env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            when = _kill_when(proc, out, time.monotonic() + delay, nth)
            proc.wait()
            if "too late" not in when:
                break
            delay /= 2
        outcomes.append(when)
        for pt in (out / "checkpoints").glob("*.pt") if (out / "checkpoints").is_dir() else []:
            load_checkpoint(pt)  # every checkpoint left on disk loads
        resume = ["--resume", str(out)] if (out / "config.yaml").is_file() else ["--out", str(out)]
        cmd = train_args(data, out)[:-2] + resume
        _run_to_end(cmd, env)
        got = RunDir(out).read_metrics()
        assert len(got) == len(expected), (k, when)
        for a, b in zip(expected, got):
            for key in set(a) - set(TIMING):
                assert a[key] == pytest.approx(b[key], abs=1e-6, nan_ok=True), (k, when, a["epoch"], key)
        assert RunDir(out).read_summary()[score] == expected_test
        assert not list(out.rglob("*.tmp"))  # what a killed write left is cleared on resume
    print("kill points:", outcomes)
    assert sum("too late" not in o for o in outcomes) >= max(1, points - 1), outcomes
