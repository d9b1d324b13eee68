"""SIGTERM (a scheduler's or ``kill``'s polite stop) ends a training run as Ctrl-C does: a line in
the log and on the console, the command that continues it, exit status 143, and a run that resumes."""

import os
import signal
import subprocess
import sys
import time

from cnnlab.run import RunDir
from tests.conftest import write_cifar_batches


def test_sigterm_mid_training_says_how_to_resume_and_the_run_resumes(tmp_path):
    data = write_cifar_batches(tmp_path / "cifar").parent
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CNNLAB_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "cnnlab", "cifar", "train", "--width", "0.125", "--epochs", "6", "--batch-size", "16",
           "--data-dir", str(data), "--device", "cpu", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and not RunDir(out).last_checkpoint.is_file():
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)

    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"cnnlab: interrupted by SIGTERM; continue with: cnnlab cifar train --resume {out}"
    assert "interrupted by SIGTERM" in (out / "train.log").read_text()
    assert RunDir(out).read_summary().get("status") != "finished"

    resumed = subprocess.run([sys.executable, "-m", "cnnlab", "cifar", "train", "--resume", str(out)],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {out} after epoch" in resumed.stderr  # continued, not started again
    assert RunDir(out).read_summary()["status"] == "finished"
    assert len(RunDir(out).read_metrics()) == 6
