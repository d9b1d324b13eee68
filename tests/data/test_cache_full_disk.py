"""A cache folder that cannot take a cache (a full disk) costs only speed: one warning, the command goes on,
no cache file and no temporary file are left, and no run folder is half made."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
from unittest import mock

import pytest
import torch

from cnnlab.commands.main import main
from cnnlab.data import cache
from tests.conftest import write_cifar_batches

TRAIN = ["cifar", "train", "--width", "0.125", "--epochs", "1", "--batch-size", "32", "--device", "cpu"]


class _FullDisk(io.RawIOBase):
    """The file of a disk that fills up after ``room`` bytes: writes fail with ENOSPC, as the kernel's do."""

    def __init__(self, f, room: int, fail_on: str):
        self.f, self.room, self.fail_on = f, room, fail_on

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.room -= len(b)
        if self.fail_on == "write" and self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(b)

    def flush(self) -> None:
        if self.fail_on == "flush":
            raise OSError(errno.ENOSPC, "No space left on device")


def _raise_inside_torch_save(record, f):
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


@pytest.fixture(params=["write", "flush", "torch.save"])
def full_disk(request, monkeypatch):
    """Every checked cache write fails the way a full disk makes it fail: inside torch's writer (which
    reports it as RuntimeError 'unexpected pos'), as ENOSPC at the flush, or torch.save's own error."""
    real = cache.atomic_open

    @contextlib.contextmanager
    def atomic_open(path, mode="wb"):
        with real(path, mode) as f:
            if request.param == "torch.save":  # only while the cache writer writes: checkpoints save as ever
                with mock.patch.object(torch, "save", _raise_inside_torch_save):
                    yield f
            else:
                yield _FullDisk(f, 4096, request.param)

    monkeypatch.setattr(cache, "atomic_open", atomic_open)
    return request.param


def _cache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_unwritable_cache_is_one_warning_and_no_file(tmp_path, full_disk, caplog):
    data = {"images": torch.zeros(4, 3, 32, 32, dtype=torch.uint8), "labels": torch.arange(4)}
    with caplog.at_level(logging.WARNING, logger="cnnlab"):
        cache.save_checked(tmp_path / "c.pt", data, key="k", meta={}, what="test cache")
    warnings = _cache_warnings(caplog)
    assert len(warnings) == 1 and "could not write the test cache" in warnings[0], warnings
    assert str(tmp_path / "c.pt") in warnings[0]
    assert list(tmp_path.iterdir()) == []  # neither the cache nor its temporary file


def test_cifar_train_on_a_full_cache_disk_goes_on(tmp_path, monkeypatch, full_disk, capsys):
    cache_root = tmp_path / "cache"
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(cache_root))
    data = write_cifar_batches(tmp_path / "data").parent
    out = tmp_path / "run"
    rc = main(TRAIN + ["--data-dir", str(data), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert err.count("could not write the CIFAR-10 cache") == 1 and "Traceback" not in err, err
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert [p for p in cache_root.rglob("*") if p.is_file()] == []  # no cache, no temporary file
    # The same command again does the same (no "already holds this run" from a stub): here, in a new folder.
    assert main(TRAIN + ["--data-dir", str(data), "--out", str(tmp_path / "again")]) == 0
    assert capsys.readouterr().err.count("could not write the CIFAR-10 cache") == 1


def test_a_start_that_fails_with_an_unexpected_error_leaves_no_stub(tmp_path, monkeypatch, capsys):
    """Whatever stops a new run before its first checkpoint (here a RuntimeError while the data loads),
    config.yaml is removed again, so the same command is not then told the folder 'already holds this run'."""
    import cnnlab.cifar.train as cifar_train

    def broken(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(cifar_train, "load_cifar10", broken)
    data = write_cifar_batches(tmp_path / "data").parent
    out = tmp_path / "runs" / "A"
    with pytest.raises(RuntimeError):
        main(TRAIN + ["--data-dir", str(data), "--out", str(out)])
    assert not (tmp_path / "runs").exists()
    monkeypatch.undo()
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    assert main(TRAIN + ["--data-dir", str(data), "--out", str(out)]) == 0
