"""Where decoded data sets are cached, how a cache entry is keyed, and the one checked way to write and read it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from cnnlab.files import atomic_open

logger = logging.getLogger(__name__)


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """``override``, else ``$CNNLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/cnnlab`` (``~/.cache/cnnlab``)."""
    if override:
        return Path(override)
    if os.environ.get("CNNLAB_CACHE_DIR"):
        return Path(os.environ["CNNLAB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnnlab"


def fingerprint(files: Iterable[Path], root: Path, *extra: object) -> str:
    """A key that changes when any file is added, removed, resized or touched."""
    h = hashlib.sha1()
    h.update(str(root.resolve()).encode())
    for e in extra:
        h.update(repr(e).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


# --------------------------------------------------------------------------- checked cache files
#
# A cache is never trusted: each file carries a digest of everything it holds and
# a description of it (each tensor's shape, dtype and value range, each list's
# length), beside the key of the source files it was made from and what its
# maker expects of it (image size, number of files...). On load all of it is
# checked; anything amiss costs one warning and a rebuild from the source files.

_FORMAT = "cnnlab checked cache"
_FORMAT_VERSION = 1


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def digest(data: dict[str, Any]) -> str:
    """SHA-256 of every value of ``data``: tensors by dtype, shape and bytes, the rest as JSON."""
    h = hashlib.sha256()
    for name in sorted(data):
        v = data[name]
        h.update(f"\0{name}\0".encode())
        if isinstance(v, torch.Tensor):
            h.update(f"{v.dtype}{tuple(v.shape)}".encode())
            h.update(_tensor_bytes(v))
        else:
            h.update(json.dumps(v, sort_keys=True).encode())
    return h.hexdigest()


def describe(data: dict[str, Any]) -> dict[str, dict]:
    """What ``data`` holds: each tensor's shape and dtype (and value range for integers), each list's length."""
    out: dict[str, dict] = {}
    for name in sorted(data):
        v = data[name]
        if isinstance(v, torch.Tensor):
            d: dict = {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            if not v.is_floating_point() and not v.is_complex() and v.numel():
                d["range"] = [int(v.min()), int(v.max())]
            out[name] = d
        elif isinstance(v, (list, tuple)):
            out[name] = {"length": len(v)}
        else:
            out[name] = {"type": type(v).__name__}
    return out


def save_checked(path: Path, data: dict[str, Any], *, key: str, meta: dict[str, Any], what: str) -> None:
    """Write ``data`` (tensors, lists of strings, plain values) with its digest, description, ``key`` and ``meta``.

    Written straight into the atomic temporary file: buffering first would hold
    a second copy of every image. A folder that cannot take it (full, read-only)
    only costs speed: one warning, no file, no temporary file left. torch's writer
    reports a failed write (a full disk) as a RuntimeError (``unexpected pos``),
    not as the OSError beneath it.
    """
    record = {"format": _FORMAT, "version": _FORMAT_VERSION, "key": key, "meta": meta,
              "description": describe(data), "digest": digest(data), "data": data}
    try:
        with atomic_open(path, "wb") as f:
            torch.save(record, f)
    except (OSError, RuntimeError) as e:
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        logger.warning("could not write the %s %s (%s); going on without it, the next run builds it again",
                       what, path, text)


def load_checked(path: Path, *, key: str, meta: dict[str, Any], what: str,
                 check: Callable[[dict], str | None] | None = None) -> dict | None:
    """The data of the checked cache ``path``, or None when it has to be built (again).

    None without a word when there is no file; with an info line when it was
    made from other source files (``key``); with one warning for anything else:
    a file that does not decode, is not a checked cache, fails its digest or
    its description, was made for other settings (``meta``), or that
    ``check(data)`` (what the maker knows the data must be) finds fault with.
    """
    if not path.is_file():
        return None
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
        problem = _problem(record, meta)
        if problem is None and record["key"] == key and check is not None:
            problem = check(record["data"])
    except Exception as e:  # noqa: BLE001 -- truncated, garbage, another torch version: all mean "build it again"
        text = str(e).strip()
        problem = f"it cannot be read: {text.splitlines()[0][:200] if text else type(e).__name__}"
    if problem is not None:
        logger.warning("ignoring the %s %s (%s); building it again from the source files", what, path, problem)
        return None
    if record["key"] != key:
        logger.info("the source files of the %s %s changed since it was written; building it again", what, path)
        return None
    return record["data"]


def _problem(record: Any, meta: dict[str, Any]) -> str | None:
    if not isinstance(record, dict) or record.get("format") != _FORMAT:
        return "not a checked cache file (written by another version of cnnlab, or not by cnnlab)"
    if record.get("version") != _FORMAT_VERSION:
        return f"format version {record.get('version')!r}, expected {_FORMAT_VERSION}"
    data = record.get("data")
    if not isinstance(data, dict) or not isinstance(record.get("key"), str):
        return "it holds no data"
    if digest(data) != record.get("digest"):
        return "its contents do not match its digest"
    if describe(data) != record.get("description"):
        return "its contents do not match its description"
    saved = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    wrong = [f"{k} {saved.get(k)!r} where {v!r} is expected" for k, v in meta.items() if saved.get(k) != v]
    return f"made for other settings: {'; '.join(wrong)}" if wrong else None


def labelled_images_problem(images: Any, labels: Any, *, size: int | tuple[int, int], classes: int,
                            name: str = "images") -> str | None:
    """Why ``images``/``labels`` are not uint8 (N, 3, H, W) images with int64 labels in ``0..classes-1``, or None."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or tuple(images.shape[1:]) != (3, *hw):
        got = f"{str(images.dtype).removeprefix('torch.')} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        return f"{name} are {got}, expected uint8 (N, 3, {hw[0]}, {hw[1]})"
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != (len(images),):
        got = f"{str(labels.dtype).removeprefix('torch.')} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        return f"labels of the {name} are {got}, expected int64 ({len(images)},)"
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        return f"labels of the {name} span {int(labels.min())}..{int(labels.max())}, expected 0..{classes - 1}"
    return None
