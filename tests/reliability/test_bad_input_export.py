"""``cnnlab cifar export`` / ``faces export`` and --out: nothing is replaced that must be kept.

A file already at --out is kept unless --force; a link, a FIFO, a folder and
anything in a run's checkpoints/ are never replaced, --force or not. Each
refusal is one message naming --out as given, on one line, with exit status 2.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.commands.main import main
from cnnlab.errors import TargetRefused
from cnnlab.export import read_metadata
from cnnlab.files import atomic_open
from tests.faces.conftest import make_people, tiny_options
from tests.reliability.conftest import check_bad_input
from tests.reliability.test_bad_input import previous_run  # noqa: F401 -- a fixture, used by name

ROOT = Path(__file__).resolve().parents[2]


def _export(run, out, *extra, study="cifar", fmt="torchscript"):
    return [study, "export", str(run), "--format", fmt, "--out", str(out), *extra]


# --- case builders: (case folder, copy of the run) -> (argv, culprit) ---------------------


def _into_checkpoints(name, *extra):
    def case(tmp, prev):
        return _export(prev, prev / "checkpoints" / name, *extra), "is inside the checkpoints folder of the run"
    return case


def _through_a_linked_run(tmp, prev):
    (tmp / "linked").symlink_to(prev, target_is_directory=True)
    return _export(prev, tmp / "linked" / "checkpoints" / "best.pt", "--force"), "checkpoints folder of the run"


def _fifo(*extra):
    def case(tmp, prev):
        os.mkfifo(tmp / "pipe.pt")
        return _export(prev, tmp / "pipe.pt", *extra), "pipe.pt is a FIFO (named pipe), not a regular file"
    return case


def _link_to_a_file(tmp, prev):
    (tmp / "real.pt").write_bytes(b"someone else's file")
    (tmp / "link.pt").symlink_to("real.pt")
    return _export(prev, tmp / "link.pt", "--force"), "link.pt is a symbolic link (to real.pt)"


def _dangling_link(*extra):
    def case(tmp, prev):
        (tmp / "dead.pt").symlink_to("nowhere.pt")
        return _export(prev, tmp / "dead.pt", *extra), "dead.pt is a symbolic link (to nowhere.pt, which does not exist)"
    return case


def _dangling_folder_link(tmp, prev):
    (tmp / "gone").symlink_to("missing_folder")
    return _export(prev, tmp / "gone" / "B.pt"), "gone is a symbolic link to missing_folder, which does not exist"


def _a_folder(tmp, prev):
    return _export(prev, tmp, "--force"), f"--out {tmp} is a folder, not a regular file"


def _existing(name, culprit):
    def case(tmp, prev):
        (tmp / name).write_bytes(b"an earlier export")
        return _export(prev, tmp / name), culprit
    return case


def _no_run_but_a_refused_out(tmp, prev):
    # --out is checked first: its refusal comes before any run is opened.
    (tmp / "B.pt").write_bytes(b"an earlier export")
    return _export(tmp / "no-such-run", tmp / "B.pt"), "B.pt already exists"


CASES = [
    ("out is the run's best checkpoint", _into_checkpoints("best.pt"), 2),
    ("out is the run's best checkpoint, --force", _into_checkpoints("best.pt", "--force"), 2),
    ("out is a new file in the run's checkpoints", _into_checkpoints("exported.pt", "--force"), 2),
    ("out is a new folder in the run's checkpoints", _into_checkpoints("sub/exported.pt"), 2),
    ("out in checkpoints through a linked run folder", _through_a_linked_run, 2),
    ("out is a FIFO", _fifo(), 2),
    ("out is a FIFO, --force", _fifo("--force"), 2),
    ("out is a link to a file, --force", _link_to_a_file, 2),
    ("out is a dangling link", _dangling_link(), 2),
    ("out is a dangling link, --force", _dangling_link("--force"), 2),
    ("out's folder is a dangling link", _dangling_folder_link, 2),
    ("out is a folder, --force", _a_folder, 2),
    ("out exists", _existing("B.pt", "B.pt already exists; give --force to replace it"), 2),
    ("out exists, its name holds a newline", _existing("a\nb.pt", "a\\nb.pt' already exists"), 2),
    ("out is refused before the run is opened", _no_run_but_a_refused_out, 2),
]


@pytest.mark.parametrize("name, build, status", CASES, ids=[c[0] for c in CASES])
def test_bad_out_gets_one_clear_message(name, build, status, tmp_path, previous_run, capsys):  # noqa: F811
    check_bad_input(build, previous_run, tmp_path, capsys, status)


@pytest.fixture(scope="module")
def face_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("facerun")
    assert main(["faces", "train", *tiny_options(make_people(root / "faces")), "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.mark.parametrize("build", [_fifo("--force"), _into_checkpoints("best.pt", "--force")], ids=["fifo", "best"])
def test_faces_export_refuses_as_cifar_does(build, face_run, tmp_path, capsys):
    def faces(case, prev):
        argv, culprit = build(case, prev)
        return ["faces", *argv[1:]], culprit

    check_bad_input(faces, face_run, tmp_path, capsys)


# --- what is kept, and what --force replaces ------------------------------------------------


def test_an_existing_export_keeps_its_bytes_and_force_replaces_it(previous_run, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "B.pt"
    assert main(_export(previous_run, out)) == 0
    first = out.read_bytes()
    out.write_bytes(first + b"edited by hand")
    capsys.readouterr()
    assert main(_export(previous_run, out, fmt="onnx")) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == first + b"edited by hand"
    assert main(_export(previous_run, out, "--force")) == 0
    assert out.read_bytes() != first + b"edited by hand" and read_metadata(out)["format"] == "torchscript"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["B.pt"]  # no temporary file left


def test_a_fifo_that_appears_during_the_export_is_kept(previous_run, tmp_path, capsys, monkeypatch):  # noqa: F811
    import cnnlab.export

    out = tmp_path / "B.pt"
    real = cnnlab.export.cifar_export

    def then_a_fifo(run_dir, *args):  # out is checked before this, free; a FIFO takes the name while the export runs
        result = real(run_dir, *args)
        os.mkfifo(out)
        return result

    monkeypatch.setattr(cnnlab.export, "cifar_export", then_a_fifo)
    for extra in ((), ("--force",)):
        if out.exists():
            out.unlink()
        assert main(_export(previous_run, out, *extra)) == 2
        assert "B.pt is a FIFO (named pipe), not a regular file" in capsys.readouterr().err
        assert out.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["B.pt"]


def test_an_exclusive_write_replaces_nothing_that_appeared(tmp_path):
    out = tmp_path / "x.bin"
    with pytest.raises(TargetRefused, match="appeared while the new file was written"):
        with atomic_open(out, exclusive=True) as f:
            f.write(b"new")
            out.write_bytes(b"someone else's")
    assert out.read_bytes() == b"someone else's" and os.listdir(tmp_path) == ["x.bin"]
    (tmp_path / "y.bin").symlink_to("nowhere")
    with pytest.raises(TargetRefused):
        with atomic_open(tmp_path / "y.bin", exclusive=True) as f:
            f.write(b"new")
    assert os.readlink(tmp_path / "y.bin") == "nowhere"


def test_without_hard_links_an_exclusive_write_checks_the_name_again(tmp_path, monkeypatch):
    def no_links(src, dst, **kw):  # FAT, some network shares
        raise OSError(errno.EPERM, "Operation not permitted", src, dst)

    monkeypatch.setattr(os, "link", no_links)
    with atomic_open(tmp_path / "new.bin", exclusive=True) as f:
        f.write(b"new")
    assert (tmp_path / "new.bin").read_bytes() == b"new"
    with pytest.raises(TargetRefused, match="appeared while the new file was written"):
        with atomic_open(tmp_path / "late.bin", exclusive=True) as f:
            f.write(b"new")
            os.mkfifo(tmp_path / "late.bin")
    assert (tmp_path / "late.bin").is_fifo() and sorted(os.listdir(tmp_path)) == ["late.bin", "new.bin"]


# --- messages: what the user gave, and only what is true --------------------------------------


def test_a_full_disk_names_out_not_the_temporary_file(previous_run, tmp_path, capsys, monkeypatch):  # noqa: F811
    out = tmp_path / "c1.pt"
    out_given = f"{tmp_path}/./c1.pt"  # as typed: the message repeats it, not a normalised or temporary name

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert main(_export(previous_run, out_given)) == 1
    err = capsys.readouterr().err
    assert f"No space left on device ({out_given}); what was written before is intact" in err
    assert ".tmp" not in err and not out.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("error, intact", [
    (OSError(errno.ENOSPC, "No space left on device", "a.pt"), True),
    (OSError(errno.EROFS, "Read-only file system", "a.pt"), True),
    (OSError(errno.ENOENT, "No such file or directory", "a.pt"), False),
    (OSError(errno.EACCES, "Permission denied", "a\nb.pt"), False),
], ids=["full", "read-only", "missing", "denied"])
def test_only_a_failed_write_says_earlier_files_are_intact(error, intact, previous_run, tmp_path, capsys,  # noqa: F811
                                                           monkeypatch):
    import cnnlab.export

    def fails(*a, **k):
        raise error

    monkeypatch.setattr(cnnlab.export, "export_run", fails)
    assert main(_export(previous_run, tmp_path / "x.pt")) == 1  # a run: the command looks at RUN_DIR first
    err = capsys.readouterr().err
    shown = repr(error.filename) if "\n" in error.filename else error.filename
    assert err.count("\n") == 1 and f"({shown})" in err
    assert ("what was written before is intact" in err) == intact


def test_a_closed_pipe_on_stdout_ends_quietly():
    read, write = os.pipe()
    os.close(read)  # nobody reads: `cnnlab ... | head` once head has gone
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    try:
        p = subprocess.run([sys.executable, "-m", "cnnlab", "cifar", "summary", "--json"], stdout=write,
                           stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    finally:
        os.close(write)
    assert (p.returncode, p.stderr) == (141, "")


def test_printed_paths_stay_on_one_line(previous_run, tmp_path, capsys):  # noqa: F811
    from cnnlab.commands.options import print_result

    out = tmp_path / "new\nline.pt"
    assert main(_export(previous_run, out)) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and repr(str(out)) in printed and out.is_file()
    print_result({}, (), where={"run": Path("runs/a\nb"), "report": "runs/x\ty.html"})
    assert capsys.readouterr().out == "run: 'runs/a\\nb'\nreport: 'runs/x\\ty.html'\n"
