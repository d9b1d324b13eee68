"""What a command checks before anything that costs time: its files, folders, run folders and numbers.

A command's own work (loading a network, decoding a data set, training) takes
seconds to hours; a typo in a path or a value should not wait for it. These
checks only look at the file system (``stat``, a folder's entries, a run's
``config.yaml``) and at values, so every command runs them first, in the
order of its arguments. Each message names the path or value as given and,
where the caller says which, the option that carried it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnlab.errors import CnnlabError, ConfigError, DataError, shown_path
from cnnlab.files import not_a_regular_file
from cnnlab.run import RunDir, study_of


def input_file(path: str | os.PathLike, what: str) -> Path:
    """``path``, a regular file to read, or a :class:`DataError` ``"<what> <path> does not exist"`` (or what
    else it is: a folder, a FIFO)."""
    problem = not_a_regular_file(path)
    if problem:
        raise DataError(f"{what} {shown_path(path)} {problem}")
    return Path(path)


def input_folder(path: str | os.PathLike, what: str) -> Path:
    """``path``, an existing folder, or a :class:`DataError` saying what it is instead."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} {shown_path(path)} does not exist")
    if not p.is_dir():
        raise DataError(f"{what} {shown_path(path)} is not a folder")
    return p


def run_folder(path: str | os.PathLike, config_class: type, needs_config: bool = True) -> RunDir:
    """The run folder at ``path``, made by the study whose configuration is ``config_class``; a
    :class:`CnnlabError` saying what ``path`` is otherwise (nothing, a file, a folder without a run, a
    run of the other study). ``needs_config=False``: for a command that makes do without its
    ``config.yaml`` (it still refuses a run of the other study)."""
    run = RunDir(path)
    study = study_of({name: None for name in config_class.__dataclass_fields__})
    made_by = f"give the folder of a run made by cnnlab {study} train"
    if not run.path.exists():
        raise CnnlabError(f"{shown_path(path)} does not exist; {made_by}")
    if not run.path.is_dir():
        raise CnnlabError(f"{shown_path(path)} is not a folder; {made_by}")
    if needs_config and not run.config_path.is_file():
        raise CnnlabError(f"{shown_path(path)} holds no cnnlab run (no config.yaml); {made_by}")
    run.expect_study(config_class)
    return run


def output_folder(path: str | os.PathLike, what: str) -> Path:
    """``path``, a folder to write into (it may not exist yet): a :class:`CnnlabError` when it, or the
    nearest existing folder above it, is no folder or cannot be written to."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CnnlabError(f"{what} {shown_path(path)} is a file, expected a folder")
    _writable_above(p if p.exists() else p.parent, what, path)
    return p


def output_file(path: str | os.PathLike, what: str) -> Path:
    """``path``, a file to write: a :class:`CnnlabError` when the nearest existing folder above it is no
    folder or cannot be written to (what is at ``path`` itself is for the writer to judge)."""
    p = Path(path)
    _writable_above(p.parent, what, path)
    return p


def _writable_above(folder: Path, what: str, given: str | os.PathLike) -> None:
    """The nearest existing folder at or above ``folder`` is one, and can take new entries."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CnnlabError(f"{what} {shown_path(given)}: {shown_path(folder)} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CnnlabError(f"{what} {shown_path(given)}: the folder {shown_path(folder)} cannot be written to")


def positive(value, what: str) -> int:
    """``value``, an integer of at least 1, or a :class:`ConfigError` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what}: expected a positive integer, got {value!r}")
    return value


__all__ = ["input_file", "input_folder", "output_file", "output_folder", "positive", "run_folder"]
