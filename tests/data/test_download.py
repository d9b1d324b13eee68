import hashlib
import io
import os
import re
import socket
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cnnlab.data import download
from cnnlab.data.download import download_url, extract_archive, md5sum
from cnnlab.errors import ConfigError, DataError

DATA = os.urandom(300_000)  # incompressible, so a truncated archive is cut inside its data
DATA_MD5 = hashlib.md5(DATA).hexdigest()
WRONG_MD5 = "0" * 32


# --------------------------------------------------------------------------- a local HTTP server


@dataclass
class ServerState:
    data: bytes = DATA
    honour_range: bool = True
    drop_after: int | None = None  # the first answer stops after this many body bytes
    fail_first: int | None = None  # the first answer is this HTTP error
    ranges: list = field(default_factory=list)  # the Range header of each request (None when absent)
    served: int = 0  # body bytes sent, over all requests
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(state: ServerState):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            with state.lock:
                state.ranges.append(rng)
                fail, state.fail_first = state.fail_first, None
            if self.path != "/file.bin":
                self.send_error(404, "Not Found")
                return
            if fail:
                self.send_error(fail)
                return
            data, start = state.data, 0
            if rng and state.honour_range:
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with state.lock:
                if state.drop_after is not None:
                    # The header promised everything; the connection closes early (HTTP/1.0).
                    body, state.drop_after = body[: state.drop_after], None
                state.served += len(body)
            self.wfile.write(body)

    return Handler


@pytest.fixture
def serve():
    servers = []

    def start(state: ServerState) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/file.bin"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


# --------------------------------------------------------------------------- md5 and arguments


def test_md5sum_matches_hashlib_for_any_chunk_size(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    assert md5sum(path) == DATA_MD5
    assert md5sum(path, chunk_size=7) == DATA_MD5


def test_md5_argument_must_be_32_hex_digits(tmp_path):
    with pytest.raises(ConfigError, match="32 hex digits"):
        download_url(tmp_path / "x", tmp_path / "y", md5="abc")


# --------------------------------------------------------------------------- HTTP downloads


def test_download_verifies_md5_and_leaves_no_part(serve, tmp_path):
    state = ServerState()
    url = serve(state)
    dest = tmp_path / "sub" / "file.tar.gz"

    assert download_url(url, dest, DATA_MD5.upper(), progress=False) == dest

    assert dest.read_bytes() == DATA
    assert not _part(dest).exists()
    assert state.ranges == [None]
    assert state.served == len(DATA)


def test_wrong_md5_names_both_checksums_and_leaves_nothing(serve, tmp_path):
    url = serve(ServerState())
    dest = tmp_path / "file.bin"

    with pytest.raises(DataError) as err:
        download_url(url, dest, WRONG_MD5, progress=False)

    msg = str(err.value)
    assert url in msg and WRONG_MD5 in msg and DATA_MD5 in msg
    assert not dest.exists()
    assert not _part(dest).exists()


def test_dropped_connection_resumes_with_range_and_fetches_only_the_rest(serve, tmp_path):
    n = 100_000
    state = ServerState(drop_after=n)
    url = serve(state)
    dest = tmp_path / "file.bin"

    download_url(url, dest, DATA_MD5, progress=False, retries=1)

    assert dest.read_bytes() == DATA
    assert state.ranges == [None, f"bytes={n}-"]
    assert state.served == len(DATA)  # the first n bytes were not fetched twice


def test_interrupted_download_keeps_its_part_and_a_later_call_resumes(serve, tmp_path):
    n = 123_456
    state = ServerState(drop_after=n)
    url = serve(state)
    dest = tmp_path / "file.bin"

    with pytest.raises(DataError) as err:
        download_url(url, dest, DATA_MD5, progress=False, retries=0)
    assert url in str(err.value) and "by hand" in str(err.value) and str(dest) in str(err.value)
    assert not dest.exists()  # a half file is never taken for a finished one
    assert _part(dest).read_bytes() == DATA[:n]

    download_url(url, dest, DATA_MD5, progress=False, retries=0)

    assert dest.read_bytes() == DATA
    assert state.ranges[-1] == f"bytes={n}-"
    assert state.served == len(DATA)


def test_server_that_ignores_range_restarts_from_zero(serve, tmp_path):
    n = 50_000
    state = ServerState(honour_range=False, drop_after=n)
    url = serve(state)
    dest = tmp_path / "file.bin"

    download_url(url, dest, DATA_MD5, progress=False, retries=1)

    assert dest.read_bytes() == DATA
    assert state.ranges == [None, f"bytes={n}-"]
    assert state.served == n + len(DATA)


def test_complete_part_answered_416_is_finished_without_a_body(serve, tmp_path):
    state = ServerState()
    url = serve(state)
    dest = tmp_path / "file.bin"
    _part(dest).write_bytes(DATA)  # every byte arrived, the rename did not happen

    download_url(url, dest, DATA_MD5, progress=False, retries=0)

    assert dest.read_bytes() == DATA
    assert state.ranges == [f"bytes={len(DATA)}-"]
    assert state.served == 0


def test_stale_part_with_wrong_bytes_is_downloaded_again_once(serve, tmp_path):
    n = 1000
    state = ServerState()
    url = serve(state)
    dest = tmp_path / "file.bin"
    _part(dest).write_bytes(b"x" * n)  # left over from another version of the file

    download_url(url, dest, DATA_MD5, progress=False, retries=0)

    assert dest.read_bytes() == DATA
    assert state.ranges == [f"bytes={n}-", None]


def test_existing_good_file_is_returned_without_a_request(serve, tmp_path):
    state = ServerState()
    url = serve(state)
    dest = tmp_path / "file.bin"
    dest.write_bytes(DATA)

    assert download_url(url, dest, DATA_MD5, progress=False) == dest
    assert state.ranges == []


def test_existing_file_with_wrong_md5_is_fetched_again(serve, tmp_path):
    state = ServerState()
    url = serve(state)
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"not it")

    download_url(url, dest, DATA_MD5, progress=False)

    assert dest.read_bytes() == DATA
    assert state.ranges == [None]


def test_http_404_names_the_url_and_is_not_retried(serve, tmp_path):
    state = ServerState()
    url = serve(state).replace("file.bin", "missing.bin")
    dest = tmp_path / "file.bin"

    with pytest.raises(DataError, match="404") as err:
        download_url(url, dest, progress=False, retries=3)

    assert url in str(err.value) and "by hand" in str(err.value)
    assert len(state.ranges) == 1
    assert not dest.exists()


def test_transient_server_error_is_retried(serve, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "_backoff_s", lambda attempt: 0.0)
    state = ServerState(fail_first=503)
    url = serve(state)
    dest = tmp_path / "file.bin"

    download_url(url, dest, DATA_MD5, progress=False, retries=1)

    assert dest.read_bytes() == DATA
    assert len(state.ranges) == 2


def test_unreachable_server_is_a_data_error_with_the_url(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/file.bin"

    with pytest.raises(DataError) as err:
        download_url(url, tmp_path / "file.bin", progress=False, retries=0, timeout=5)

    assert url in str(err.value) and "by hand" in str(err.value)


# --------------------------------------------------------------------------- local sources


@pytest.mark.parametrize("as_url", [True, False], ids=["file-url", "plain-path"])
def test_local_source_is_copied_with_the_same_checks(tmp_path, as_url):
    src = tmp_path / "my data" / "file.bin"  # a space, to exercise URL quoting
    src.parent.mkdir()
    src.write_bytes(DATA)
    url = src.as_uri() if as_url else str(src)
    dest = tmp_path / "out" / "file.bin"

    assert download_url(url, dest, DATA_MD5, progress=False) == dest
    assert dest.read_bytes() == DATA

    bad = tmp_path / "out" / "other.bin"
    with pytest.raises(DataError, match=WRONG_MD5) as err:
        download_url(url, bad, WRONG_MD5, progress=False)
    assert DATA_MD5 in str(err.value)
    assert not bad.exists() and not _part(bad).exists()


def test_missing_local_source_is_named(tmp_path):
    src = tmp_path / "nowhere.bin"
    with pytest.raises(DataError, match="nowhere.bin"):
        download_url(src.as_uri(), tmp_path / "file.bin", progress=False)


# --------------------------------------------------------------------------- archives


def _add(tar: tarfile.TarFile, name: str, *, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_tar_gz_extracts_into_a_new_folder(tmp_path):
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        _add(tar, "top", kind=tarfile.DIRTYPE)
        _add(tar, "top/a.txt", data=b"alpha")
        _add(tar, "top/sub/b.bin", data=DATA)
        _add(tar, "top/link", kind=tarfile.SYMTYPE, link="a.txt")
    dest = tmp_path / "root"

    files = extract_archive(archive, dest)

    assert files == [dest / "top" / "a.txt", dest / "top" / "link", dest / "top" / "sub" / "b.bin"]
    assert (dest / "top" / "a.txt").read_bytes() == b"alpha"
    assert (dest / "top" / "sub" / "b.bin").read_bytes() == DATA
    assert (dest / "top" / "link").read_bytes() == b"alpha"
    assert _snapshot(tmp_path) - _snapshot(dest) == {"data.tar.gz", "root"} | {
        "root/" + p for p in _snapshot(dest)
    }  # no temporary folder left behind


def test_extracting_into_an_existing_folder_replaces_only_the_archive_entries(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    archive = root / "data.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        _add(tar, "batches/one", data=b"new")
    (root / "batches").mkdir()
    (root / "batches" / "stale").write_bytes(b"old")  # from an earlier, broken extraction
    (root / "keep.txt").write_bytes(b"mine")

    files = extract_archive(archive, root)

    assert files == [root / "batches" / "one"]
    assert sorted(p.name for p in root.iterdir()) == ["batches", "data.tgz", "keep.txt"]
    assert sorted(p.name for p in (root / "batches").iterdir()) == ["one"]


def test_zip_extracts(tmp_path):
    archive = tmp_path / "w.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("w/weights.bin", DATA)
        zf.writestr("w/empty/", b"")
    dest = tmp_path / "out"

    assert extract_archive(archive, dest) == [dest / "w" / "weights.bin"]
    assert (dest / "w" / "weights.bin").read_bytes() == DATA
    assert (dest / "w" / "empty").is_dir()


def _evil_members(outside: Path) -> dict[str, list]:
    """Archives that try to write outside the destination; the first name listed is the culprit."""
    return {
        "dotdot": [("../evil.txt", {"data": b"x"})],
        "absolute": [(str(outside / "abs_evil.txt"), {"data": b"x"})],
        "symlink-out": [
            ("escape", {"kind": tarfile.SYMTYPE, "link": "../.."}),
            ("escape/evil.txt", {"data": b"x"}),
        ],
        "symlink-absolute": [
            ("escape", {"kind": tarfile.SYMTYPE, "link": str(outside)}),
            ("escape/evil.txt", {"data": b"x"}),
        ],
        # Each link looks harmless alone; together they lead out of the folder.
        "symlink-chain": [
            ("here", {"kind": tarfile.SYMTYPE, "link": "."}),
            ("here/up", {"kind": tarfile.SYMTYPE, "link": ".."}),
            ("up/evil.txt", {"data": b"x"}),
        ],
        "hardlink-out": [("hard", {"kind": tarfile.LNKTYPE, "link": "../victim.txt"})],
        "fifo": [("pipe", {"kind": tarfile.FIFOTYPE})],
    }


_EVIL_CULPRIT = {
    "dotdot": "../evil.txt",
    "absolute": "abs_evil.txt",
    "symlink-out": "escape",
    "symlink-absolute": "escape",
    "symlink-chain": "here/up",
    "hardlink-out": "hard",
    "fifo": "pipe",
}


@pytest.mark.parametrize("with_filter", [True, False], ids=["data-filter", "no-filter"])
@pytest.mark.parametrize("case", sorted(_EVIL_CULPRIT))
def test_tar_member_escaping_the_folder_is_refused(tmp_path, monkeypatch, case, with_filter):
    if not with_filter:  # behave like a Python without tarfile's extraction filters
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    (tmp_path / "victim.txt").write_bytes(b"victim")
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        _add(tar, "fine.txt", data=b"ok")
        for name, kw in _evil_members(tmp_path)[case]:
            _add(tar, name, **kw)
    before = _snapshot(tmp_path)
    dest = tmp_path / "out"

    with pytest.raises(DataError) as err:
        extract_archive(archive, dest)

    assert "evil.tar" in str(err.value)
    assert _EVIL_CULPRIT[case] in str(err.value)
    assert _snapshot(tmp_path) == before  # nothing written, not even the destination
    assert (tmp_path / "victim.txt").read_bytes() == b"victim"


@pytest.mark.parametrize("name", ["../evil.txt", "/abs_evil.txt", "a/../../evil.txt", "..\\evil.txt"])
def test_zip_slip_is_refused(tmp_path, name):
    archive = tmp_path / "slip.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", b"ok")
        zf.writestr(zipfile.ZipInfo(name), b"x")
    before = _snapshot(tmp_path)

    with pytest.raises(DataError) as err:
        extract_archive(archive, tmp_path / "out")

    assert "slip.zip" in str(err.value) and repr(name) in str(err.value)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.95])
def test_truncated_tar_gz_is_a_data_error(tmp_path, keep):
    whole = tmp_path / "whole.tar.gz"
    with tarfile.open(whole, "w:gz") as tar:
        _add(tar, "top/a.bin", data=DATA)
        _add(tar, "top/b.bin", data=DATA[::-1])
    raw = whole.read_bytes()
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(raw[: int(len(raw) * keep)])
    before = _snapshot(tmp_path)

    with pytest.raises(DataError, match="truncated or corrupted") as err:
        extract_archive(archive, tmp_path / "out")

    assert "cut.tar.gz" in str(err.value)
    assert _snapshot(tmp_path) == before


def test_corrupted_zip_is_a_data_error(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.bin", DATA)
    raw = bytearray(archive.read_bytes())
    raw[1000] ^= 0xFF  # inside a.bin's data: the CRC no longer matches
    archive.write_bytes(bytes(raw))

    with pytest.raises(DataError, match="bad.zip"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_an_archive_and_missing_archive_are_named(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello, not an archive" * 50)
    with pytest.raises(DataError, match="junk.bin.*not a tar or zip"):
        extract_archive(junk, tmp_path / "out")
    with pytest.raises(DataError, match="missing.tar.*does not exist"):
        extract_archive(tmp_path / "missing.tar", tmp_path / "out")
