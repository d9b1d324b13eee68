"""What every bad-input case checks, for the CIFAR and the face tables alike."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from cnnlab.commands.main import main


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def check_bad_input(build, previous: Path, tmp_path: Path, capsys, status: int = 2,
                    replaced: str | None = None) -> None:
    """Prepare a case with ``build(case_dir, run_copy)``, run it, and check that it gets one
    message naming the culprit, exits with ``status``, shows no traceback, runs no pickled
    code, leaves every file of the earlier run as it was (but ``replaced``, which the
    case itself overwrote) and creates nothing (no stub run folder)."""
    shutil.copytree(previous.parent, tmp_path / "prev")  # a copy: cases may damage files of the run
    prev = tmp_path / "prev" / previous.name
    case = tmp_path / "case"
    case.mkdir()
    argv, culprit = build(case, prev)
    before = snapshot(prev)
    made = sorted(case.rglob("*"))
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == status, err
    assert culprit in err, err
    assert err.strip().splitlines()[-1].startswith("cnnlab: error: ") and "Traceback" not in err
    assert not list(tmp_path.rglob("PWNED")), "a pickle ran code"
    assert sorted(case.rglob("*")) == made, "a refused command left files or folders behind (a stub run?)"
    after = snapshot(prev)
    if replaced:
        before.pop(replaced), after.pop(replaced)
    assert after == before


@contextlib.contextmanager
def lock_held_elsewhere(run: Path):
    """Another process holding ``run``'s lock, as a training run would; killed with SIGKILL at the end."""
    code = ("import sys, time\nfrom cnnlab.run import RunDir\n"
            "held = RunDir(sys.argv[1]).lock('cifar train')\nheld.__enter__()\nprint('held', flush=True)\ntime.sleep(300)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
