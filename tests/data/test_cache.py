"""The checked cache: digest, self-description and settings are checked on every load; any fault
costs one warning and a rebuild, never a traceback and never silently wrong data."""

from __future__ import annotations

import logging

import pytest
import torch

from cnnlab.data.cache import load_checked, save_checked

META = {"image_size": 4, "files": 3}


def _data() -> dict:
    return {"images": torch.arange(3 * 3 * 4 * 4, dtype=torch.uint8).reshape(3, 3, 4, 4),
            "labels": torch.tensor([0, 1, 2]), "names": ["a", "b", "c"]}


@pytest.fixture
def cached(tmp_path):
    path = tmp_path / "c.pt"
    save_checked(path, _data(), key="k1", meta=META, what="test cache")
    return path


def _load(path, caplog, key="k1", meta=META, check=None):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        out = load_checked(path, key=key, meta=meta, what="test cache", check=check)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return out, warnings


def _rewrite(path, **changes):
    """Edit the file as a person (or a bug) would: new contents, the old digest and description kept."""
    record = torch.load(path, weights_only=True)
    for k, v in changes.items():
        if k in record["data"]:
            record["data"][k] = v
        else:
            record[k] = v
    torch.save(record, path)


def test_a_sound_cache_loads_without_a_word(cached, caplog):
    out, warnings = _load(cached, caplog)
    assert warnings == [] and out["names"] == ["a", "b", "c"] and torch.equal(out["images"], _data()["images"])


def test_no_file_is_no_cache_and_no_warning(tmp_path, caplog):
    assert _load(tmp_path / "none.pt", caplog) == (None, [])


@pytest.mark.parametrize("edit, why", [
    (dict(labels=torch.zeros(3, dtype=torch.int64)), "do not match its digest"),  # labels zeroed
    (dict(images=torch.zeros(3, 3, 4, 4, dtype=torch.uint8)), "do not match its digest"),
    (dict(names=["a", "b", "x"]), "do not match its digest"),
    (dict(description={"images": {"shape": [3]}}), "do not match its description"),
    (dict(meta={"image_size": 8, "files": 3}), "image_size 8 where 4 is expected"),
    (dict(format="something else"), "not a checked cache"),
    (dict(data=None), "holds no data"),
])
def test_an_edited_cache_is_ignored_with_one_warning(cached, caplog, edit, why):
    _rewrite(cached, **edit)
    out, warnings = _load(cached, caplog)
    assert out is None and len(warnings) == 1 and why in warnings[0] and str(cached) in warnings[0]


def test_flipped_bytes_never_pass(cached, caplog):
    raw = bytearray(cached.read_bytes())
    for offset in range(len(raw) // 4, len(raw) * 3 // 4, 97):  # through the stored tensors
        raw[offset] ^= 0xFF
    cached.write_bytes(bytes(raw))
    out, warnings = _load(cached, caplog)
    assert out is None and len(warnings) == 1 and "ignoring the test cache" in warnings[0]


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_a_file_that_is_no_cache_is_ignored(cached, caplog, content):
    if content is None:
        torch.save({"images": torch.zeros(1)}, cached)  # another dict: once a KeyError
    else:
        cached.write_bytes(content)
    out, warnings = _load(cached, caplog)
    assert out is None and len(warnings) == 1 and str(cached) in warnings[0]


def test_other_settings_or_a_failed_check_are_warnings(cached, caplog):
    out, warnings = _load(cached, caplog, meta={"image_size": 4, "files": 4})
    assert out is None and "files 3 where 4 is expected" in warnings[0]
    out, warnings = _load(cached, caplog, check=lambda d: "its labels are odd")
    assert out is None and len(warnings) == 1 and "its labels are odd" in warnings[0]


def test_changed_source_files_are_an_info_not_a_warning(cached, caplog):
    out, warnings = _load(cached, caplog, key="k2")
    assert out is None and warnings == [] and "changed since it was written" in caplog.text


def test_an_unwritable_folder_only_warns(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="cnnlab"):
        save_checked(blocker / "c.pt", _data(), key="k", meta=META, what="test cache")
    assert "could not write the test cache" in caplog.text
