"""A download that fails says how to do without the network, and leaves nothing it made behind.

No network is needed: the "server" is a local port nothing listens on, or the local server of
test_download.py, which can drop a connection after some bytes.
"""

from __future__ import annotations

import functools
import socket

import pytest

from cnnlab.commands.main import main
from cnnlab.data import download
from cnnlab.data.download import DownloadFailed, download_url, made_folder
from tests.data.test_download import DATA, DATA_MD5, ServerState, serve  # noqa: F401 (serve: a fixture)
from tests.faces.conftest import tiny_options


@pytest.fixture
def unreachable(monkeypatch):
    """A URL on a local port nothing listens on; failed tries are retried without waiting."""
    monkeypatch.setattr(download, "_backoff_s", lambda attempt: 0.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/x"


def test_a_failed_download_removes_the_folders_it_made_and_keeps_the_one_that_was_there(tmp_path, unreachable):
    (tmp_path / "data").mkdir()
    dest = tmp_path / "data" / "new" / "deeper" / "file.bin"
    with pytest.raises(DownloadFailed) as err:
        download_url(unreachable, dest, progress=False, retries=1, timeout=5)
    assert unreachable in str(err.value) and f"put it at {dest}" in str(err.value)
    assert not (tmp_path / "data" / "new").exists()
    assert (tmp_path / "data").is_dir()  # there before: kept, empty as it is


def test_made_folder_keeps_what_something_else_wrote_meanwhile(tmp_path):
    with pytest.raises(RuntimeError):
        with made_folder(tmp_path / "a" / "b") as folder:
            (tmp_path / "a" / "note.txt").write_text("mine")
            raise RuntimeError("failed")
    assert not (folder).exists() and (tmp_path / "a" / "note.txt").read_text() == "mine"


def test_a_part_with_bytes_is_kept_and_named_one_without_is_removed(serve, tmp_path):  # noqa: F811
    url = serve(ServerState(drop_after=100_000))
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadFailed) as err:
        download_url(url, dest, DATA_MD5, progress=False, retries=0)
    part = tmp_path / "file.bin.part"
    assert part.read_bytes() == DATA[:100_000]
    assert f"the 100,000 bytes fetched so far are kept in {part}, and the next try continues from them" in str(err.value)

    part.unlink()
    url = serve(ServerState(drop_after=0))  # the server answers, then closes before any byte
    with pytest.raises(DownloadFailed) as err:
        download_url(url, dest, DATA_MD5, progress=False, retries=0)
    assert not part.exists() and "kept in" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_cifar_download_failure_names_copies_on_disk_and_leaves_no_data_folder(tmp_path, unreachable, monkeypatch,
                                                                               capsys):
    import cnnlab.data.cifar10 as cifar10

    monkeypatch.setattr(cifar10, "URL", unreachable)
    data = tmp_path / "data" / "cifar10"
    with pytest.raises(DownloadFailed) as err:  # the library, in its words
        cifar10.load_cifar10(data, download_if_missing=True)
    assert "copy of CIFAR-10 already on disk as the data folder" in str(err.value) and "--" not in str(err.value)
    assert not (tmp_path / "data").exists()

    out = tmp_path / "runs" / "new"
    rc = main(["cifar", "train", "--width", "0.125", "--epochs", "1", "--data-dir", str(data), "--download",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("cnnlab: error: ") == 1 and "Traceback" not in err
    assert f"cannot download {unreachable}" in err and f"put it at {data / 'cifar-10-python.tar.gz'}" in err
    assert "point --data-dir at a copy of CIFAR-10 already on disk: the official cifar-10-batches-py folder" in err
    assert "train/<class>/ and test/<class>/ image folders" in err
    assert sorted(tmp_path.iterdir()) == [], "a failed download left its data folder (or a run folder) behind"


def test_lfw_download_failure_names_the_data_dir_and_a_file_url(tmp_path, unreachable, monkeypatch, capsys):
    import cnnlab.data.lfw as lfw

    monkeypatch.setattr(lfw, "LFW_URL", unreachable + "/")
    target = tmp_path / "data" / "lfw"
    assert main(["faces", "download", "--data-dir", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"cannot download {unreachable}/lfw-deepfunneled.tgz" in err and "Traceback" not in err
    assert "give the folder holding them as --url file:///path/to/that/folder/" in err
    assert "or train with --data-dir at a copy of LFW already on disk" in err
    assert not (tmp_path / "data").exists()

    # Training with --download says it with the options of training, and of the command that can use a copy.
    monkeypatch.setattr(lfw, "download_lfw", functools.partial(lfw.download_lfw, base_url=unreachable))
    assert main(["faces", "train", *tiny_options(target), "--download", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "point --data-dir at a copy of LFW already on disk" in err
    assert f"run cnnlab faces download --data-dir {target} --url file:///path/to/that/folder/" in err
    assert sorted(tmp_path.iterdir()) == []


def test_lfw_library_message_names_no_option(tmp_path, unreachable):
    from cnnlab.data.lfw import download_lfw

    with pytest.raises(DownloadFailed) as err:
        download_lfw(tmp_path / "lfw", base_url=unreachable)
    assert "as the base URL (file:///path/to/folder/)" in str(err.value) and "--" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_download_url_naming_the_archive_itself_is_told_to_give_its_folder(tmp_path, capsys):
    archive = tmp_path / "mirror" / "lfw-deepfunneled.tgz"
    archive.parent.mkdir()
    archive.write_bytes(b"not really")
    assert main(["faces", "download", "--data-dir", str(tmp_path / "lfw"), "--url", archive.as_uri()]) == 2
    err = capsys.readouterr().err
    assert f"--url {archive.as_uri()} names a file; give the folder holding lfw-deepfunneled.tgz" in err
    assert f"{archive.parent.as_uri()}/" in err and not (tmp_path / "lfw").exists()
