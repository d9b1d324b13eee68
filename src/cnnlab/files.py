"""Atomic file writes and safe checkpoint loading.

Everything cnnlab writes into a run folder goes through these functions: the
data goes to a temporary file in the same folder, is flushed and fsynced, and
is then renamed over the target, so a crash or a full disk leaves either the
old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from cnnlab.errors import CheckpointError


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def not_a_regular_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a file (``"does not exist"``, ``"is a folder, not a regular file"``), or None.

    Checked before opening: a FIFO would block the read and ``/dev/zero`` never ends.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "does not exist"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "not a plain file")
    return f"is {kind}, not a regular file"


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results should read like any other file
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj, indent=2) + "\n")


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """Strict JSON, as every reader accepts it: a NaN or infinite number is written as ``null``."""
    return json.dumps(json_ready(obj), allow_nan=False, **kwargs)


def json_ready(obj: Any) -> Any:
    """``obj`` as plain JSON values: non-finite floats as None, paths as text, numpy and torch numbers and
    arrays as Python's; anything else is a TypeError."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch arrays and scalars (a 0-d one gives a plain number)
        return json_ready(obj.tolist())
    if hasattr(obj, "item"):
        return json_ready(obj.item())
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_model_state(model: "torch.nn.Module", state: Any, path: str | os.PathLike, what: str = "") -> None:
    """Load ``state`` into ``model``, or a :class:`CheckpointError` naming the file, the model and the misfit.

    A model whose weights were once saved under other names renames them first
    (its ``upgrade_state_dict(state)``), wherever its checkpoints are loaded.
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds no model weights")
    if hasattr(model, "upgrade_state_dict"):
        state = model.upgrade_state_dict(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} weights of other shapes, e.g. {k} {tuple(state[k].shape)} "
                         f"where {tuple(own[k].shape)} is expected")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        target = what or type(model).__name__
        raise CheckpointError(f"checkpoint {path} was saved from another architecture than {target} "
                              f"({'; '.join(parts)})")
    model.load_state_dict(state)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    require: dict[str, type | tuple[type, ...]] | None = None) -> dict:
    """Load a checkpoint without running any code it might carry (``weights_only=True``).

    ``require`` maps the keys the caller reads to the types their values must have: a
    :class:`CheckpointError` naming the file and the key when one is missing or of another type.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- garbage fails in many ways: UnpicklingError, BadZipFile, Overflow, Memory, ...
        text = str(e).strip()
        refused = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", text)
        first = f"it asks for {refused.group(1)}, which is refused" if refused else \
            (text.splitlines()[0] if text else type(e).__name__)
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely: it is truncated, corrupted or holds "
            f"more than tensors and plain values ({first[:200]})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    for key, kind in (require or {}).items():
        problem = _key_problem(obj, key, kind)
        if problem:
            raise CheckpointError(f"checkpoint {path} is damaged or not of this version of cnnlab: {problem}")
    return obj


_KIND_NAMES = {int: "an integer", float: "a number", dict: "a mapping", list: "a list", str: "a string"}


def _key_problem(obj: dict, key: str, kind: type | tuple[type, ...]) -> str | None:
    """Why ``obj[key]`` is not a ``kind`` (a key that is missing, a boolean where an integer is expected), or None."""
    if key not in obj:
        return f"it has no '{key}'"
    value, kinds = obj[key], kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        return None
    expected = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
    shown = repr(value) if isinstance(value, (str, int, float, bool)) or value is None else type(value).__name__
    return f"its '{key}' is {shown[:60]}, expected {expected}"
