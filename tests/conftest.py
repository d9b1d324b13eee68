import os
from pathlib import Path

import pytest

# Real-data samples live beside a checkout in some setups (../shared/datasets);
# CNNLAB_DATASETS points elsewhere. Tests that use them skip when absent.
_SHARED = Path(os.environ.get("CNNLAB_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


@pytest.fixture
def shared_datasets() -> Path:
    if not _SHARED.is_dir():
        pytest.skip(f"real-data samples not found at {_SHARED}")
    return _SHARED


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Decoded-data caches go to a per-session temporary folder, never the user's ~/.cache.
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
