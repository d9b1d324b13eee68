import logging
import pickle

import pytest
import torch

from cnnlab.data.cifar10 import (detect_layout, load_cifar10, read_batch, stratified_split, subsample)
from cnnlab.errors import ConfigError, DataError
from tests.conftest import TouchesOnLoad


def test_reads_official_batches(cifar_batches):
    d = load_cifar10(cifar_batches)
    assert d.layout == "batches"
    assert d.train_images.shape == (5 * 40, 3, 32, 32) and d.train_images.dtype == torch.uint8
    assert d.test_images.shape == (40, 3, 32, 32)
    assert d.train_labels.dtype == torch.int64 and torch.bincount(d.train_labels).tolist() == [20] * 10
    assert d.classes[0] == "airplane" and d.classes[-1] == "truck"
    # The pixel layout is the official one: 1024 red, then green, then blue values, row-major.
    with open(cifar_batches / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    assert torch.equal(d.train_images[0].reshape(-1), torch.from_numpy(raw[0]))


def test_batches_folder_itself_is_accepted(cifar_batches):
    layout, folder = detect_layout(cifar_batches / "cifar-10-batches-py")
    assert layout == "batches" and folder.name == "cifar-10-batches-py"


def test_reads_image_folders(cifar_folders):
    d = load_cifar10(cifar_folders)
    assert d.layout == "folders"
    assert d.train_images.shape == (100, 3, 32, 32) and d.test_images.shape == (40, 3, 32, 32)
    assert torch.bincount(d.train_labels).tolist() == [10] * 10
    assert d.classes == sorted(d.classes)


def test_folder_images_of_other_formats_and_sizes(tmp_path):
    from PIL import Image

    from tests.conftest import write_cifar_folders

    root = write_cifar_folders(tmp_path / "c", n_train=2, n_test=1, ext="jpg")
    Image.new("L", (64, 48), 128).save(root / "train" / "cat" / "gray.png")  # grayscale, other size
    d = load_cifar10(root)
    assert d.train_images.shape == (21, 3, 32, 32)


def test_second_load_uses_the_cache(cifar_folders, monkeypatch):
    load_cifar10(cifar_folders)
    import cnnlab.data.cifar10 as mod

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(mod, "_decode_folders", boom)
    d = load_cifar10(cifar_folders)
    assert len(d.train_labels) == 100


def test_cache_notices_changed_files(cifar_folders):
    first = load_cifar10(cifar_folders)
    (cifar_folders / "train" / "cat" / "0030.png").unlink()
    second = load_cifar10(cifar_folders)
    assert len(second.train_labels) == len(first.train_labels) - 1


@pytest.mark.parametrize("contents, message", [
    (None, "does not exist"),
    ([], "is empty"),
    (["notes.txt"], "holds neither"),
    (["train/"], "holds neither"),
])
def test_missing_empty_and_wrong_layout(tmp_path, contents, message):
    root = tmp_path / "data"
    if contents is not None:
        root.mkdir()
        for name in contents:
            (root / name).mkdir() if name.endswith("/") else (root / name).write_text("x")
    with pytest.raises(DataError, match=f"^data_dir {root}.*{message}"):
        load_cifar10(root)


def test_incomplete_batches_name_the_missing_files(cifar_batches):
    (cifar_batches / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(cifar_batches)


def test_truncated_batch_is_a_clear_error(cifar_batches):
    path = cifar_batches / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match=r"data_batch_2.*truncated or corrupted"):
        read_batch(path)


def test_malicious_batch_executes_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": TouchesOnLoad(marker)}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_1.*refusing to load"):
        read_batch(path)
    assert not marker.exists()


def test_split_is_stratified_disjoint_and_deterministic():
    labels = torch.arange(10).repeat_interleave(50)[torch.randperm(500, generator=torch.Generator().manual_seed(1))]
    tr, va = stratified_split(labels, val_per_class=7, seed=3)
    assert torch.bincount(labels[va]).tolist() == [7] * 10
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    assert len(tr) + len(va) == 500
    tr2, va2 = stratified_split(labels, val_per_class=7, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    _, va3 = stratified_split(labels, val_per_class=7, seed=4)
    assert not torch.equal(va, va3)


def test_default_split_is_1000_a_class_on_the_full_set_and_proportional_below():
    full = torch.arange(10).repeat_interleave(5000)
    _, va = stratified_split(full)
    assert torch.bincount(full[va]).tolist() == [1000] * 10
    small = torch.arange(10).repeat_interleave(200)
    _, va = stratified_split(small)
    assert torch.bincount(small[va]).tolist() == [40] * 10


def test_split_refuses_more_validation_than_a_class_has():
    with pytest.raises(ConfigError, match="^val_per_class 5"):
        stratified_split(torch.arange(10).repeat_interleave(5), val_per_class=5)


def test_subsample_is_seeded():
    idx = torch.arange(100)
    a, b = subsample(idx, 10, 0), subsample(idx, 10, 0)
    assert torch.equal(a, b) and len(a) == 10 and len(set(a.tolist())) == 10
    assert torch.equal(subsample(idx, None, 0), idx)


def _archive_of(batches_root, tmp_path):
    import tarfile

    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batches_root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def test_download_fetches_checks_and_extracts(cifar_batches, tmp_path, monkeypatch):
    import cnnlab.data.cifar10 as mod
    from cnnlab.data.download import md5sum

    archive = _archive_of(cifar_batches, tmp_path)
    monkeypatch.setattr(mod, "URL", archive.as_uri())
    monkeypatch.setattr(mod, "MD5", md5sum(archive))
    target = tmp_path / "fresh"
    d = load_cifar10(target, download_if_missing=True)
    assert d.layout == "batches" and len(d.train_labels) == 200
    assert (target / "cifar-10-batches-py" / "test_batch").is_file()


def test_download_with_a_wrong_checksum_is_an_error_and_leaves_nothing(cifar_batches, tmp_path, monkeypatch):
    import cnnlab.data.cifar10 as mod

    archive = _archive_of(cifar_batches, tmp_path)
    monkeypatch.setattr(mod, "URL", archive.as_uri())  # MD5 stays the official one: a mismatch
    target = tmp_path / "fresh"
    with pytest.raises(DataError, match="c58f30108f718f92721af3b95e74349a"):
        load_cifar10(target, download_if_missing=True)
    assert not (target / "cifar-10-batches-py").exists()
    assert not (target / "cifar-10-python.tar.gz").exists()


def _cache_files(tmp_path):
    return sorted((tmp_path / "cache").glob("cifar10-*.pt"))


@pytest.mark.parametrize("damage, why", [
    ("zero labels", "do not match its digest"),
    ("other image size", "train images are uint8 (200, 3, 16, 16), expected uint8 (N, 3, 32, 32)"),
    ("labels of another count", "labels of the train images are int64 (7,)"),
    ("another dict", "not a checked cache"),
])
def test_a_damaged_cache_is_rebuilt_with_one_warning(cifar_batches, tmp_path, caplog, damage, why):
    """Labels set to zeros once trained to validation accuracy 1.0; a cache holding another dict raised KeyError."""
    from cnnlab.data import cache

    first = load_cifar10(cifar_batches, cache_root=tmp_path / "cache")
    (path,) = _cache_files(tmp_path)
    record = torch.load(path, weights_only=True)
    data = record["data"]
    if damage == "zero labels":
        data["train_labels"] = torch.zeros_like(data["train_labels"])
    else:
        if damage == "other image size":
            data["train_images"] = data["train_images"][..., :16, :16].contiguous()
        elif damage == "labels of another count":
            data["train_labels"] = data["train_labels"][:7]
        record.update(description=cache.describe(data), digest=cache.digest(data))  # consistent, yet wrong
    torch.save(record if damage != "another dict" else {"train_images": torch.zeros(1)}, path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cnnlab"):
        again = load_cifar10(cifar_batches, cache_root=tmp_path / "cache")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and why in warnings[0] and str(path) in warnings[0]
    assert torch.equal(again.train_labels, first.train_labels) and torch.equal(again.train_images, first.train_images)
    caplog.clear()
    load_cifar10(cifar_batches, cache_root=tmp_path / "cache")  # rebuilt: trusted again
    assert not caplog.records
