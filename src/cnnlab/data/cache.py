"""Where decoded data sets are cached, and how a cache entry is keyed and read."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Iterable

import torch

from cnnlab.files import atomic_torch_save

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


def load_cached(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged cache is rebuilt, never trusted
        logger.warning("ignoring unreadable cache %s (%s); decoding again", path, e)
        return None


def save_cached(path: Path, obj: dict) -> None:
    try:
        atomic_torch_save(obj, path)
    except OSError as e:  # a read-only or full cache folder only costs speed
        logger.warning("could not write cache %s (%s)", path, e)
