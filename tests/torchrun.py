"""Runs under ``torchrun`` for the distributed tests of both studies: a run to its end, or killed mid-run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from cnnlab.errors import CnnlabError
from cnnlab.run import RunDir


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CNNLAB_CACHE_DIR": str(tmp_path / "cache")}


def command(args: list[str], nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "cnnlab", *args]


def torchrun(args: list[str], tmp_path: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(command(args, nproc), env=env(tmp_path), capture_output=True, text=True, timeout=300)


def metrics_rows(run: Path) -> int:
    """Lines of ``run``'s metrics.csv, the header included (0 while there is none)."""
    path = run / "metrics.csv"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, their children, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def kill_when(args: list[str], tmp_path: Path, run: Path, ready: Callable[[Path], bool], timeout: float = 240) -> None:
    """Start ``args`` under torchrun, SIGKILL the launcher and its workers once ``ready(run)``, and return
    when the run folder is free again.

    ``wait()`` reaps only the launcher: a worker killed by the same signal may still be tearing down,
    holding the run's lock, for a moment longer on a loaded machine, and a resume started then is
    refused as a second process on the run."""
    proc = subprocess.Popen(command(args), env=env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready(run):
            # The launcher and its workers: torchrun may start each worker in a process group of its
            # own, which a killpg of the launcher's group does not reach.
            for pid in [proc.pid, *descendants(proc.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    deadline = time.monotonic() + 60
    while True:
        try:
            with RunDir(run).lock("test"):
                return
        except CnnlabError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
