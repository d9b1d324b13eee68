"""Kill a search worker with SIGKILL in the middle of a trial, then run the search again:
the finished trials are kept, the interrupted one is marked failed, the rest run."""

import csv
import os
import signal
import subprocess
import sys
import time

import yaml

from tests.faces.conftest import make_people, tiny_options

SPACE = {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
         "epochs": {"type": "categorical", "choices": [3]}}


def test_sigkill_mid_trial_then_resume(tmp_path):
    faces = make_people(tmp_path / "faces")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "cnnlab", "faces", "search", *tiny_options(faces), "--space", str(space),
           "--trials", "3", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Wait until the second trial has finished its first epoch, then kill the worker.
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "trial-0001" / "checkpoints" / "last.pt").is_file():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait() == -signal.SIGKILL, "the search finished before it could be killed"

    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    with open(out / "trials.csv", newline="") as f:
        states = [r["state"] for r in csv.DictReader(f)]
    assert states[:2] == ["COMPLETE", "FAIL"] and states.count("COMPLETE") == 3
    assert (out / "trial-0000" / "summary.json").is_file()  # the finished trial was kept, not rerun
    assert (out / "best_params.yaml").is_file()
