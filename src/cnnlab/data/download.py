"""Downloading data and weights, and unpacking archives without trusting them.

A download is streamed into ``<dest>.part`` and only renamed to ``dest`` once
it is complete and its md5 matches, so a file at ``dest`` is never half of one;
an interrupted download resumes from its ``.part`` with an HTTP ``Range``
request. A ``file://`` URL or a plain path takes the same road, which lets a
user without internet hand over a file fetched elsewhere. A failed download
leaves no folder it created empty behind, and no ``.part`` without bytes; a
network failure is a :class:`DownloadFailed`, whose message its caller can
complete with how to do without the network.

An archive is unpacked into a hidden temporary folder that is moved into place
at the end, so an interrupted extraction never leaves a folder that looks
complete. No member may land outside the target folder: absolute names,
``..`` components and links that point outside are refused with a
:class:`~cnnlab.errors.DataError` naming the archive and the member.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import contextlib
import logging
import lzma
import os
import re
import secrets
import shutil
import ssl
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from tqdm import tqdm

from cnnlab import __version__
from cnnlab.errors import ConfigError, DataError
from cnnlab.files import fsync_dir

logger = logging.getLogger(__name__)

_USER_AGENT = f"cnnlab/{__version__}"

# Errors that mean "the connection or the server failed", as opposed to a bug or
# a full disk; only these are retried and reported as a download failure.
_NETWORK_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    ssl.SSLError,
)

# HTTP answers worth asking again: the server is busy or failed, not the URL.
_TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

# What a broken compressed stream raises while tarfile or zipfile reads it.
_CORRUPT_TAR = (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)
_CORRUPT_ZIP = (zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)


# --------------------------------------------------------------------------- checksums


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """The md5 of the file at ``path``, as 32 lower-case hex digits."""
    # usedforsecurity=False: md5 here checks integrity, and FIPS systems refuse it otherwise.
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _check_md5_arg(md5: str | None) -> str | None:
    if md5 is None:
        return None
    if not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise ConfigError(f"md5 {md5!r} is not a checksum: expected 32 hex digits")
    return md5.lower()


# --------------------------------------------------------------------------- downloads


class DownloadFailed(DataError):
    """A download that the network or the server let fail (not a wrong checksum, not a bad URL).

    The message says what failed (``problem``), where a file fetched elsewhere
    goes (``by_hand``), how to use a copy already on disk instead
    (``offline``, in the words of whoever knows the dataset: its loader, a
    command with its options; see :meth:`advising`) and what was kept for the
    next try (``note``).
    """

    def __init__(self, problem: str, by_hand: Path, offline: str = "", note: str = ""):
        self.problem, self.by_hand, self.offline, self.note = problem, by_hand, offline, note
        super().__init__(f"{problem}. You can download the file by hand and put it at {by_hand}"
                         + (f"; or {offline}" if offline else "") + note)

    def advising(self, offline: str) -> "DownloadFailed":
        """The same failure, with ``offline`` as the way to do without the download."""
        return DownloadFailed(self.problem, self.by_hand, offline, self.note)


@contextlib.contextmanager
def made_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Create the folder ``path`` (and its missing parents); if the block fails, remove again those of
    them it created that are still empty. What was there before is never removed."""
    path = Path(path)
    created = []
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        created.append(folder)
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in created:  # the deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (something else is in it now), or gone: keep it
                break
        raise


def download_url(
    url: str | os.PathLike,
    dest: str | os.PathLike,
    md5: str | None = None,
    *,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    timeout: float = 60,
    retries: int = 3,
) -> Path:
    """Fetch ``url`` to ``dest`` and return ``dest``.

    ``url`` is an ``http(s)://`` or ``ftp://`` URL, a ``file://`` URL or a
    plain local path. The bytes go to ``dest`` + ``.part`` first; a ``.part``
    left by an interrupted download is resumed with a ``Range`` request when the
    server supports it (it answers 206) and restarted from zero when it does not
    (it answers 200). When the file is complete its md5 is checked (when ``md5``
    is given), it is fsynced and then renamed to ``dest``.

    If ``dest`` already exists and its md5 matches (or no ``md5`` is given,
    since only a complete file is ever renamed to ``dest``), it is returned at
    once without touching the network.

    A connection that fails or drops is tried again up to ``retries`` more
    times, continuing from the bytes already saved. ``progress`` shows a byte
    progress bar on a terminal (none when output is not a TTY).

    A failed download leaves the folders it created for ``dest`` only if
    something else is in them now, and a ``.part`` only if it holds bytes
    to resume from (the message then says so).

    Raises:
        DownloadFailed: the server refuses the URL or the network fails after
            all tries; the message says that the file can be downloaded by
            hand and put at ``dest``.
        DataError: the checksum does not match (the bad ``.part`` is removed
            and the message gives the expected and the actual md5), or a local
            source file does not exist.
        ConfigError: ``md5`` is not 32 hex digits, or ``retries`` is negative.
    """
    dest = Path(dest)
    md5 = _check_md5_arg(md5)
    if retries < 0:
        raise ConfigError(f"retries={retries} must be 0 or more")

    stale_note = ""
    if dest.is_file():
        if md5 is None:
            return dest
        actual = md5sum(dest, chunk_size)
        if actual == md5:
            logger.debug("%s is already here and its md5 matches", dest)
            return dest
        logger.warning("%s exists but its md5 is %s, expected %s; fetching it again", dest, actual, md5)
        stale_note = f" ({dest} exists but its md5 is {actual}, not {md5})"

    part = dest.with_suffix(dest.suffix + ".part")
    source = _local_source(url)
    with made_folder(dest.parent):
        if source is not None:
            _copy_local(source, part, dest, progress=progress, chunk_size=chunk_size)
            try:
                _finish(part, dest, md5, str(source), chunk_size)
            except _ChecksumMismatch as e:
                raise DataError(f"{e}; the copy was removed") from None
            return dest

        url = str(url)
        logger.info("downloading %s to %s", url, dest)
        return _download(url, part, dest, md5, stale_note, progress=progress, chunk_size=chunk_size,
                         timeout=timeout, retries=retries)


def _download(url: str, part: Path, dest: Path, md5: str | None, stale_note: str, *, progress: bool,
              chunk_size: int, timeout: float, retries: int) -> Path:
    """:func:`download_url`'s network part: fetch into ``part`` with retries and resume, check, rename."""
    attempt = 0
    restarted_after_mismatch = False
    while True:
        have_before = part.stat().st_size if part.exists() else 0
        try:
            resumed = _fetch_once(url, part, dest.name, progress=progress, chunk_size=chunk_size, timeout=timeout)
        except urllib.error.HTTPError as e:
            e.close()
            reason = f"the server answered HTTP {e.code} {e.reason}"
            if e.code not in _TRANSIENT_HTTP or attempt >= retries:
                raise _failed(url, part, dest, reason, stale_note) from None
        except (*_NETWORK_ERRORS, _Incomplete) as e:
            reason = _reason(e)
            if attempt >= retries:
                raise _failed(url, part, dest, reason, stale_note) from None
        else:
            try:
                _finish(part, dest, md5, url, chunk_size)
                return dest
            except _ChecksumMismatch as e:
                # Bytes appended to a .part from an older version of the file make
                # a wrong whole; one clean download from zero settles which it is.
                if resumed and not restarted_after_mismatch:
                    logger.warning("%s after resuming; downloading it again from the start", e)
                    restarted_after_mismatch = True
                    continue
                raise DataError(f"{e}; the partial file was removed, so the next try starts clean") from None
        attempt += 1
        # A dropped connection that brought bytes (or a restart from zero) is worth
        # an immediate new request; a server that gave nothing gets time to recover.
        changed = (part.stat().st_size if part.exists() else 0) != have_before
        wait = 0.0 if changed else _backoff_s(attempt)
        logger.warning(
            "download of %s failed (%s); trying again in %.0f s (%d/%d)", url, reason, wait, attempt, retries
        )
        time.sleep(wait)



class _Incomplete(Exception):
    """The connection ended before the promised number of bytes arrived."""


class _ChecksumMismatch(Exception):
    pass


def _backoff_s(attempt: int) -> float:
    return float(min(2 ** (attempt - 1), 30))


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return str(e.reason)
    return str(e) or type(e).__name__


def _failed(url: str, part: Path, dest: Path, reason: str, note: str) -> DownloadFailed:
    """The :class:`DownloadFailed` of a download given up; a ``.part`` without bytes is removed, one with
    bytes is kept (the next try resumes from it) and named."""
    have = part.stat().st_size if part.is_file() else 0
    if have:
        note += f"; the {have:,} bytes fetched so far are kept in {part}, and the next try continues from them"
    else:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return DownloadFailed(f"cannot download {url}: {reason}", dest, note=note)


def _local_source(url: str | os.PathLike) -> Path | None:
    """The local file ``url`` names (``file://`` URL or plain path), or None for a network URL."""
    if isinstance(url, os.PathLike):
        return Path(url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise DataError(f"cannot read {url}: file:// URLs on another host ({parts.netloc}) are not supported")
        return Path(urllib.request.url2pathname(parts.path))
    if parts.scheme in ("http", "https", "ftp"):
        return None
    if parts.scheme == "" or len(parts.scheme) == 1:  # a plain path, or a Windows drive letter
        return Path(url)
    raise DataError(
        f"cannot download {url}: unsupported URL scheme {parts.scheme!r} (expected http, https, ftp or file)"
    )


def _progress_bar(total: int | None, initial: int, desc: str, progress: bool) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=None if progress else True,  # None: shown on a terminal only
    )


def _stream(src: BinaryIO, out: BinaryIO, bar: tqdm, chunk_size: int) -> int:
    n = 0
    while chunk := src.read(chunk_size):
        out.write(chunk)
        n += len(chunk)
        bar.update(len(chunk))
    return n


def _copy_local(source: Path, part: Path, dest: Path, *, progress: bool, chunk_size: int) -> None:
    if not source.is_file():
        raise DataError(f"cannot copy {source} to {dest}: {source} does not exist or is not a file")
    logger.info("copying %s to %s", source, dest)
    try:
        with open(source, "rb") as src, open(part, "wb") as out:
            with _progress_bar(source.stat().st_size, 0, dest.name, progress) as bar:
                _stream(src, out, bar, chunk_size)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:  # a copy starts from zero each time: half of one is of no use
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        raise


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from ``bytes a-b/total`` or ``bytes */total``; None where absent."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _fetch_once(url: str, part: Path, desc: str, *, progress: bool, chunk_size: int, timeout: float) -> bool:
    """One request, appending to ``part`` or rewriting it; True when it resumed a previous ``.part``.

    Raises :class:`_Incomplete` when the connection ends early; what arrived
    stays in ``part`` for the next request to continue from.
    """
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            _, total = _parse_content_range(e.headers.get("Content-Range"))
            e.close()
            if total == have:  # the previous run got every byte but stopped before the rename
                return True
            part.unlink()
            raise _Incomplete(f"the server cannot resume from byte {have}; starting again from zero") from None
        raise

    with response:
        if getattr(response, "status", None) == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != have:
                part.unlink()
                raise _Incomplete(f"the server resumed at byte {start}, not {have}; starting again from zero")
            logger.info("resuming %s from byte %d", url, have)
            mode, resumed = "ab", True
        else:
            if have:
                logger.info("the server does not resume downloads; fetching %s from the start", url)
            have, mode, resumed = 0, "wb", False
        length = _promised_length(response)
        total = have + length if length is not None else None

        with open(part, mode) as out:
            with _progress_bar(total, have, desc, progress) as bar:
                got = _stream(response, out, bar, chunk_size)
            out.flush()
            os.fsync(out.fileno())
    if length is not None and got < length:
        # http.client returns b"" when the peer closes early, without an error.
        raise _Incomplete(f"the connection closed after {have + got} of {total} bytes")
    return resumed


def _promised_length(response) -> int | None:
    """Bytes this answer promises (its Content-Length), or None when it does not say."""
    length = getattr(response, "length", None)  # http.client's remaining Content-Length
    if length is None:
        value = response.headers.get("Content-Length", "")
        length = int(value) if value.strip().isdigit() else None
    return length


def _finish(part: Path, dest: Path, md5: str | None, source: str, chunk_size: int) -> None:
    """Check the md5 of the complete ``part`` and rename it to ``dest``."""
    if md5 is not None:
        actual = md5sum(part, chunk_size)
        if actual != md5:
            part.unlink()
            raise _ChecksumMismatch(
                f"checksum mismatch for {source} (downloading to {dest}): expected md5 {md5}, got {actual}"
            ) from None
    os.replace(part, dest)
    fsync_dir(dest.parent)


# --------------------------------------------------------------------------- extraction


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Unpack a tar (``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``) or zip archive into ``dest``.

    The archive's top-level entries end up directly in ``dest``: unpacking
    ``cifar-10-python.tar.gz`` into ``root`` gives ``root/cifar-10-batches-py``.
    Everything is unpacked into a hidden temporary folder first and moved into
    place at the end (a missing ``dest`` appears whole; in an existing ``dest``
    each top-level entry appears whole, replacing one of the same name), so an
    interrupted extraction never leaves a half folder that looks complete.

    Tar members go through :func:`tarfile.data_filter` where Python has it,
    and through the same checks done here where it does not; on top of that,
    members with absolute names or links are refused (the data filter would
    silently strip the leading ``/``). Owners, set-uid bits and special files
    are never restored.

    Returns:
        The extracted files (and links), as paths under ``dest``, sorted.

    Raises:
        DataError: the archive is missing, is not a tar or zip file, is
            truncated or corrupted, or holds a member that would be written
            outside ``dest`` (absolute path, ``..``, or a link pointing outside);
            the message names the archive and the member. Nothing is left
            behind in either case.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError(f"cannot extract {archive}: the file does not exist")
    kind = _archive_kind(archive)

    dest_existed = dest.is_dir()
    if dest.exists() and not dest_existed:
        raise DataError(f"cannot extract {archive} into {dest}: {dest} exists and is not a folder")
    # Unpack beside the final place, on the same filesystem, so moving it in is a rename.
    work_parent = dest if dest_existed else dest.parent
    work_parent.mkdir(parents=True, exist_ok=True)
    work = work_parent / f".{dest.name}.{secrets.token_hex(4)}.extracting"
    work.mkdir()
    logger.info("extracting %s into %s", archive, dest)
    try:
        if kind == "zip":
            _extract_zip(archive, work)
        else:
            _extract_tar(archive, work)
        relative = _walk_files(work)
        if dest_existed:
            _move_entries_into(work, dest)
        else:
            os.replace(work, dest)
        fsync_dir(work_parent)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return [dest / rel for rel in relative]


def _archive_kind(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    # An unknown suffix: decide by content.
    if zipfile.is_zipfile(archive):
        return "zip"
    try:
        if tarfile.is_tarfile(archive):
            return "tar"
    except (*_CORRUPT_TAR, OSError):
        pass
    raise DataError(f"cannot extract {archive}: it is not a tar or zip archive (or it is corrupted)")


def _walk_files(root: Path) -> list[Path]:
    """Everything under ``root`` that is not a folder (links to folders included), relative and sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        base = Path(folder).relative_to(root)
        found += [base / f for f in files]
        found += [base / d for d in dirs if os.path.islink(os.path.join(folder, d))]
    return sorted(found)


def _move_entries_into(work: Path, dest: Path) -> None:
    entries = sorted(os.listdir(work))
    for entry in entries:
        target = dest / entry
        if os.path.lexists(target):
            logger.info("replacing %s with the copy from the archive", target)
            # Moved aside into the work folder, which is removed afterwards.
            os.replace(target, work / f".replaced.{secrets.token_hex(4)}.{entry}")
        os.replace(work / entry, target)


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _is_absolute(name: str) -> bool:
    # Either separator and a drive letter count, so an archive made on Windows is judged the same here.
    return name.startswith(("/", "\\")) or os.path.isabs(name) or re.match(r"[A-Za-z]:", name) is not None


def _refusal(name: str, root: str, link: str | None = None, symlink: bool = False) -> str | None:
    """Why member ``name`` (a link to ``link``, when given) may not be unpacked into ``root``; None if it may.

    Paths are resolved against what is already on disk, so a chain of links
    unpacked earlier cannot carry a later member out of ``root``.
    """
    if _is_absolute(name):
        return "is an absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "has a '..' component that would leave the destination folder"
    full = os.path.join(root, name)
    # The folder it lands in, with links followed (the member itself may replace a link).
    landing = os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full))
    if not _inside(landing, root):
        return "would be written outside the destination folder"
    if link is not None:
        if _is_absolute(link):
            return f"is a link to the absolute path {link!r}"
        # A symlink is relative to its own folder; a hard link names another member.
        base = os.path.dirname(landing) if symlink else root
        if not _inside(os.path.realpath(os.path.join(base, link)), root):
            return f"is a link to {link!r}, outside the destination folder"
    return None


def _refuse(archive: Path, member: str, why: str) -> DataError:
    return DataError(f"refusing to extract {archive}: member {member!r} {why}")


def _extract_tar(archive: Path, work: Path) -> None:
    root = os.path.realpath(work)
    data_filter: Callable | None = getattr(tarfile, "data_filter", None)

    def check(member: tarfile.TarInfo) -> None:
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise _refuse(archive, member.name, "is a device, pipe or other special file")
        link = member.linkname if (member.issym() or member.islnk()) else None
        why = _refusal(member.name, root, link, symlink=member.issym())
        if why:
            raise _refuse(archive, member.name, why)

    def strict_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        check(member)
        return data_filter(member, path)

    filter_errors = getattr(tarfile, "FilterError", ())
    try:
        with tarfile.open(archive, "r:*", errorlevel=1) as tar:
            if data_filter is not None:
                tar.extractall(work, filter=strict_filter)
            else:
                # Pythons before the extraction filters: same checks, one member at a
                # time so each sees the links unpacked before it.
                for member in tar:
                    check(member)
                    # set_attrs=False: no owners, modes or set-uid bits from the archive.
                    tar.extract(member, work, set_attrs=False)
    except filter_errors as e:  # only what our own checks missed, if anything
        member = getattr(e, "tarinfo", None)
        raise _refuse(archive, member.name if member else "?", str(e).replace(root, str(work))) from None
    except _CORRUPT_TAR as e:
        raise DataError(f"cannot extract {archive}: the archive is truncated or corrupted ({e})") from None


def _extract_zip(archive: Path, work: Path) -> None:
    root = os.path.realpath(work)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            # Checked before anything is written: zipfile would quietly rename a bad
            # member, and the user should know their archive is not what it seems.
            for info in members:
                why = _refusal(info.filename.rstrip("/"), root)
                if why:
                    raise _refuse(archive, info.filename, why)
            zf.extractall(work)
    except _CORRUPT_ZIP as e:
        raise DataError(f"cannot extract {archive}: the archive is truncated or corrupted ({e})") from None
    except NotImplementedError as e:
        raise DataError(f"cannot extract {archive}: {e} (the zip uses a method Python cannot read)") from None
    except RuntimeError as e:  # zipfile's way of saying "encrypted, needs a password"
        raise DataError(f"cannot extract {archive}: {e}") from None
