"""Atomic file writes and safe checkpoint loading.

Everything cnnlab writes into a run folder goes through these functions: the
data goes to a temporary file in the same folder, is flushed and fsynced, and
is then renamed over the target, so a crash or a full disk leaves either the
old file or the new one, never half of one. A write that must replace nothing
it did not create (an export) takes the name with a hard link instead, which
fails on anything already there.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from cnnlab.errors import CheckpointError, TargetRefused, shown_path


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
    return f"is {_kind(mode)}, not a regular file"


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a plain file")


def refuse_replacing(path: str | os.PathLike, replace_file: bool = False) -> None:
    """Raise :class:`TargetRefused` when writing ``path`` would replace what must be kept.

    Never replaced: a symbolic link (a write would replace the link, or land
    wherever it points), a folder, a device node, a FIFO, a socket; a regular
    file only when ``replace_file``. A folder on the way that is no folder (a
    file, a link to nothing) is refused here too, rather than as "File exists".
    """
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        _refuse_missing_folder(Path(path))
        return
    if stat.S_ISLNK(mode):
        to = os.readlink(path)
        gone = "" if os.path.exists(path) else ", which does not exist"
        raise TargetRefused(path, f"is a symbolic link (to {shown_path(to)}{gone}); "
                                  "a link is never replaced nor written through")
    if not stat.S_ISREG(mode):
        raise TargetRefused(path, f"is {_kind(mode)}, not a regular file; it is never replaced")
    if not replace_file:
        raise TargetRefused(path, "already exists", replaceable=True)


def _refuse_missing_folder(path: Path) -> None:
    """Refuse ``path`` when the nearest existing folder above it is no folder."""
    for folder in path.parents:
        try:
            mode = os.stat(folder).st_mode
        except NotADirectoryError:
            continue
        except FileNotFoundError:
            if os.path.islink(folder):
                raise TargetRefused(path, f"cannot be written: {shown_path(folder)} is a symbolic link to "
                                          f"{shown_path(os.readlink(folder))}, which does not exist") from None
            continue
        if not stat.S_ISDIR(mode):
            raise TargetRefused(path, f"cannot be written: {shown_path(folder)} is {_kind(mode)}, not a folder")
        return


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, exclusive: bool = False,
                check: Callable[[], None] | None = None) -> Iterator[Any]:
    """Open a temporary file beside ``path``; on a clean exit it takes ``path``'s name.

    By default it replaces whatever has that name (a run's own files). With
    ``exclusive`` it replaces nothing: anything at ``path`` by then is a
    :class:`TargetRefused`. ``check()``, when given, runs once the data is on
    disk and right before the file takes the name, to refuse (raise) what
    appeared there meanwhile. OS errors name ``path`` as given, never the
    temporary file.
    """
    given, path = os.fspath(path), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # a read-only or full folder: about path, not the random name tried
        raise OSError(e.errno, e.strerror, given) from e
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results should read like any other file
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check()
        _take_name(tmp, path, exclusive)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
            raise OSError(e.errno, e.strerror, given) from e  # the user never named the temporary file
        raise
    fsync_dir(path.parent)


# Errors of a hard link that say "not on this filesystem" (FAT, some network shares), not "already there".
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


def _take_name(tmp: str, path: Path, exclusive: bool) -> None:
    """Give the finished temporary file ``tmp`` the name ``path``.

    rename() replaces whatever has the new name, and POSIX has no portable way
    to say "unless something is there". A hard link does: link() fails with
    EEXIST on anything at ``path`` (a file, a symbolic link even to nothing, a
    FIFO, a device node) that appeared since the caller checked, so an
    exclusive write never replaces what it did not create; the temporary name
    is then dropped. Where a filesystem has no hard links the name is checked
    once more just before the rename: a window of microseconds, not none.
    """
    if not exclusive:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise TargetRefused(path, "appeared while the new file was written; it is kept as it is") from None
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(path):
            raise TargetRefused(path, "appeared while the new file was written; it is kept as it is") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


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
    _check_finite_state(state, list(own), path)
    model.load_state_dict(state)


def _check_finite_state(state: dict, names: list[str], path: str | os.PathLike) -> None:
    """A :class:`CheckpointError` naming the first weight of ``state`` (in ``names``' order) that holds a NaN or
    an infinity: such a network answers NaN for every input, which downstream code could mistake for a value."""
    floats = [k for k in names if isinstance(state[k], torch.Tensor) and state[k].is_floating_point()]
    if not floats:
        return
    finite = torch.stack([torch.isfinite(state[k]).all() for k in floats]).tolist()  # one sync
    bad = [k for k, ok in zip(floats, finite) if not ok]
    if bad:
        t = state[bad[0]]
        kind = "NaN" if bool(torch.isnan(t).any()) else "infinite values"
        more = f" (and {len(bad) - 1} more weight tensors)" if len(bad) > 1 else ""
        raise CheckpointError(f"checkpoint {path} holds non-finite weights: {bad[0]} has {kind}{more}; a network "
                              f"with them gives no valid output (the file is damaged, or was written by a run "
                              f"that diverged)")


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
