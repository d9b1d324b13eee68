"""benchmarks/serve_load.py at a toy size: a real service, its rows, no errors, the machine named."""

import json

import pytest

from tests.conftest import load_benchmark
from tests.serve.conftest import needs_extra

pytestmark = needs_extra

@pytest.fixture(scope="module")
def serve_load():
    return load_benchmark("serve_load")


def test_rows_per_client_count_with_no_errors(serve_load, finished_run, tmp_path, capsys):
    out = serve_load.main(["--run", str(finished_run), "--clients", "1,3", "--requests", "6", "--warmup", "1",
                           "--json", str(tmp_path / "load.json")])
    assert out["endpoint"] == "POST /verify"
    assert [(r["clients"], r["requests"], r["errors"]) for r in out["rows"]] == [(1, 6, 0), (3, 6, 0)]
    for r in out["rows"]:
        assert r["requests/s"] > 0 and 0 < r["p50 ms"] <= r["p95 ms"]
        assert r["mean batch"] >= 2  # a verify request is two images
    assert out["rows"][0]["vs 1 client"] == 1.0
    assert json.loads((tmp_path / "load.json").read_text())["rows"][1]["clients"] == 3
    printed = capsys.readouterr().out
    assert printed.startswith("CPU: ") and "| clients | requests | requests/s |" in printed


def test_bad_client_counts_are_refused(serve_load):
    with pytest.raises(SystemExit, match="--clients"):
        serve_load.main(["--clients", "one"])
    with pytest.raises(SystemExit, match="at least 1"):
        serve_load.main(["--clients", "0"])
