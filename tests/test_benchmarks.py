"""benchmarks/train_throughput.py at a toy size: its rows, its auto column, its list syntax."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from cnnlab.runtime import cpu_features, select_precision

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("train_throughput", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_are_blocks_by_widths_and_auto_is_the_policys_choice(throughput, tmp_path, capsys):
    out = throughput.main(["--blocks", "A", "E", "--width", "0.125,0.25", "--batch-size", "4", "--steps", "1",
                           "--warmup", "0", "--repeats", "1", "--clock", "cpu", "--json", str(tmp_path / "t.json")])
    assert [(r["blocks"], r["width"]) for r in out["rows"]] == [("A", 0.125), ("A", 0.25), ("E", 0.125), ("E", 0.25)]
    choice = select_precision(torch.device("cpu"), "auto", None)
    picked = throughput.COLUMNS[out["auto"]["column"]]
    assert picked == (choice.precision, choice.channels_last) and out["auto"]["reason"] == choice.reason
    for r in out["rows"]:
        assert r["auto img/s"] == r[out["auto"]["column"] + " img/s"] > 0
        assert r["notebook fp32 img/s"] > 0 and r["auto/notebook"] > 0
    assert json.loads((tmp_path / "t.json").read_text())["rows"][0]["blocks"] == "A"
    printed = capsys.readouterr().out
    name, features = cpu_features()
    extensions = ", ".join(features) or "none of AVX2/AVX512/AVX512-BF16/AMX"
    assert printed.startswith(f"CPU: {name}; vector extensions: {extensions}\n")  # the machine before its numbers
    assert "torch " in printed and "thread" in printed


def test_comma_and_space_lists_mean_the_same(throughput):
    assert throughput._list(["A,E"], str, "--blocks") == throughput._list(["A", "E"], str, "--blocks") == ["A", "E"]
    assert throughput._list(["1, 0.25"], float, "--width") == [1.0, 0.25]
    with pytest.raises(SystemExit, match="--width"):
        throughput._list(["one"], float, "--width")
