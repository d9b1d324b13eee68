import os
from pathlib import Path

import pytest
import torch

from cnnlab.errors import CheckpointError
from cnnlab.files import atomic_open, atomic_torch_save, atomic_write_json, load_checkpoint, read_json
from tests.conftest import TouchesOnLoad


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"x": 1})
    atomic_write_json(p, {"x": 2})
    assert read_json(p) == {"x": 2}
    assert os.listdir(tmp_path) == ["a.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(p, "w") as f:
            f.write("half of the new")
            raise RuntimeError("disk full")
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_checkpoint_round_trip_and_refusals(tmp_path):
    p = tmp_path / "c.pt"
    atomic_torch_save({"model": {"w": torch.ones(2)}, "epoch": 3}, p)
    assert load_checkpoint(p)["epoch"] == 3
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="c.pt cannot be loaded safely"):
        load_checkpoint(p)


def test_malicious_checkpoint_executes_nothing(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"model": TouchesOnLoad(marker)}, p)
    with pytest.raises(CheckpointError, match="evil.pt cannot be loaded safely"):
        load_checkpoint(p)
    assert not marker.exists()


def test_json_written_by_cnnlab_is_strict_with_null_for_missing_numbers(tmp_path):
    import json
    import math

    import numpy as np

    from cnnlab.files import atomic_write_json, dumps_json

    values = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "np": np.float32("nan"), "t": torch.tensor(1.5),
              "list": [1.0, math.nan, (2, math.inf)], "arr": np.array([0.5, np.inf]), "ok": 0.25, "flag": True,
              "path": Path("a/b")}
    atomic_write_json(tmp_path / "s.json", values)

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    back = json.loads((tmp_path / "s.json").read_text(), parse_constant=refuse)
    assert back == {"nan": None, "inf": None, "ninf": None, "np": None, "t": 1.5, "list": [1.0, None, [2, None]],
                    "arr": [0.5, None], "ok": 0.25, "flag": True, "path": "a/b"}
    assert json.loads(dumps_json({"x": math.nan}), parse_constant=refuse) == {"x": None}
