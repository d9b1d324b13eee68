"""A run is a folder: config.yaml, metrics.csv, summary.json, checkpoints/, figures/, train.log.

Every file in it is written atomically, so a crash leaves the previous version.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from cnnlab.config import load_yaml
from cnnlab.errors import CheckpointError, CnnlabError, UnfinishedRun, param
from cnnlab.files import atomic_write_json, atomic_write_text, load_checkpoint, read_json

logger = logging.getLogger(__name__)

# Options a resumed run may change although they define it: ``--epochs`` extends a run
# (the schedules are functions of the epoch, so they simply continue). ``config.yaml``
# follows them, so the folder always says where the run is going.
EXTENDABLE = ("epochs",)
LOCK_FILE = ".lock"
RESUME_KEYS = {"model": dict, "optimizer": dict, "scheduler": dict, "epoch": int, "rng": (list, dict),
               "history": list, "best": dict}
"""What a resume reads from ``checkpoints/last.pt``, and the type of each."""


class SummaryError(CnnlabError):
    """A run's summary.json is not a JSON object."""


# A field only that study's config has -> the study's name in messages.
_STUDY_FIELDS = {"cifar": "blocks", "faces": "backbone"}
_STUDIES = {"cifar": "the CIFAR-10 block study", "faces": "the face-verification study"}


_ADDED_FIELDS = {"faces": {"align": "center", "head": "relu", "flip_tta": False, "scale": 30.0, "subcenters": 3},
                 "cifar": {"recipe": None, "pooling": "intended", "time_budget": None, "schedule": "exponential",
                           "ema": 0.0, "tta": "none"}}
"""Fields added to a study's configuration since its first release, with the value that means what runs
saved before they existed did (face runs before --align centre-cropped every image; CIFAR runs recorded no
recipe and trained the intended network with the exponential schedule, no weight average, no test-time
augmentation and no time budget)."""
_RENAMED_VALUES = {"cifar": {"augment": {True: "study", False: "none"}}}
"""Values a field took before it took names: CIFAR's ``augment`` was on (the study's augmentation) or off."""


def upgrade_config(config: dict) -> dict:
    """A saved configuration with the fields added since it was written, at the values it ran with."""
    study = study_of(config) or ""
    added = _ADDED_FIELDS.get(study, {})
    renamed = {k: names[config[k]] for k, names in _RENAMED_VALUES.get(study, {}).items()
               if isinstance(config.get(k), bool) and config[k] in names}
    return {**config, **renamed, **{k: v for k, v in added.items() if k not in config}}


def study_of(config: dict) -> str | None:
    """"cifar" or "faces": the study whose config ``config`` (a dict of fields) is; None when it is neither."""
    found = [study for study, name in _STUDY_FIELDS.items() if name in config]
    return found[0] if len(found) == 1 else None


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.csv")
    summary_path = property(lambda self: self.path / "summary.json")
    log_path = property(lambda self: self.path / "train.log")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.pt")
    best_checkpoint = property(lambda self: self.path / "checkpoints" / "best.pt")
    figures = property(lambda self: self.path / "figures")

    def exists(self) -> bool:
        return self.config_path.is_file()

    def prepare(self, config: dict, resume: bool, option: str = param("out"),
                ignore: tuple[str, ...] = ()) -> list[str]:
        """Check the folder can take this run, create it and write ``config.yaml``.

        A folder that already holds a run is only continued with ``--resume``, and
        never with another configuration than the one its checkpoint holds (bar
        the ``ignore`` fields, which do not change results, and ``--epochs``,
        which extends it): nothing already written is lost. Returns the options
        that changed on resume, worded for the log.
        """
        if self.path.exists() and not self.path.is_dir():
            raise CnnlabError(f"{option} {self.path} is a file, expected a folder")
        changes: list[str] = []
        if self.exists():
            if not resume:
                what = "this run" if self.read_config() == config else "a different run"
                raise CnnlabError(
                    f"{option} {self.path} already holds {what} (config.yaml); "
                    f"continue it with {param('resume')} {self.path}, or choose another {option}"
                )
            may_differ = (*ignore, *EXTENDABLE)
            saved = self.run_config(may_differ)
            diff = _differences(saved, config, "this command", skip=may_differ)
            if diff:
                raise CnnlabError(
                    f"{param('resume')} {self.path}: the options differ from the run's ({'; '.join(diff)}); "
                    "a resumed run keeps the options it was started with"
                )
            if self.last_checkpoint.is_file():
                self.load_last()  # before anything is written: a resume that cannot go on changes nothing
            self._check_extension(config)
            changes = _differences(self._truth() or saved, config, "this command", only=may_differ)
        elif self.path.is_dir() and any(p for p in self.path.iterdir() if p.name not in ("train.log", LOCK_FILE)):
            raise CnnlabError(f"{option} {self.path} is not empty and holds no cnnlab run; choose an empty folder")
        if resume:
            for tmp in self.path.rglob(".*.tmp"):  # left by a write that was killed; never read
                tmp.unlink(missing_ok=True)
        # config.yaml first: a folder killed right after this is a run that --resume continues.
        if not self.exists():
            atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))
        else:
            saved = self.read_config()
            extended = {k: config[k] for k in EXTENDABLE if k in config and saved.get(k) != config[k]}
            if extended:
                atomic_write_text(self.config_path, yaml.safe_dump({**saved, **extended}, sort_keys=False))
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        return changes

    def load_last(self) -> dict:
        """``checkpoints/last.pt`` as a resume reads it, checked first: every key of :data:`RESUME_KEYS`, of
        its type; an ``epoch`` of 0 or more that its ``history`` covers row by row; and no epoch in
        ``metrics.csv`` that this history lacks (resuming would rewrite metrics.csv without it).
        A :class:`CheckpointError` naming the file and what is amiss."""
        path = self.last_checkpoint
        ckpt = load_checkpoint(path, require=RESUME_KEYS)
        problem = (history_problem(ckpt["epoch"], ckpt["history"]) or _best_problem(ckpt["best"])
                   or self._metrics_problem(ckpt["history"]))
        if problem:
            raise CheckpointError(f"checkpoint {path} cannot be resumed: {problem}")
        return ckpt

    def _metrics_problem(self, history: list[dict]) -> str | None:
        try:
            done = [r.get("epoch") for r in self.read_metrics()] if self.metrics_path.is_file() else []
        except (ValueError, OSError):  # unreadable: it is rewritten from the history anyway
            return None
        kept = [float(r["epoch"]) for r in history]
        if done == kept[:len(done)]:  # one row fewer: a run killed between last.pt and metrics.csv
            return None
        return (f"{self.metrics_path} holds {_epochs(done)}, the checkpoint's 'history' {_epochs(kept)}; "
                f"resuming would rewrite metrics.csv without the epochs the checkpoint lacks (is last.pt an older "
                f"copy?)")

    def best_epoch(self) -> int | None:
        """The epoch of the run's best checkpoint now (None without a readable one)."""
        if not self.best_checkpoint.is_file():
            return None
        try:
            epoch = load_checkpoint(self.best_checkpoint).get("epoch")
        except CnnlabError:
            return None
        return epoch if isinstance(epoch, int) else None

    def _truth(self) -> dict | None:
        """The configuration saved in ``checkpoints/last.pt`` (None before the first epoch ends)."""
        if not self.last_checkpoint.is_file():
            return None
        ckpt = load_checkpoint(self.last_checkpoint)
        return upgrade_config(ckpt["config"]) if isinstance(ckpt.get("config"), dict) else None

    def run_config(self, may_differ: tuple[str, ...] = ()) -> dict:
        """The run's configuration: the one its last checkpoint saved, which is the run's truth.

        ``config.yaml`` must agree with it; only the ``may_differ`` fields (how the
        run runs, and ``--epochs``) may differ, and their values are taken from
        ``config.yaml``. Before the first checkpoint ``config.yaml`` is all there is.
        """
        saved = self.read_config()
        truth = self._truth()
        if truth is None:
            return saved
        diff = _differences(truth, saved, "config.yaml", skip=may_differ)
        if diff:
            raise CnnlabError(
                f"{param('resume')} {self.path}: config.yaml differs from the configuration saved in "
                f"{self.last_checkpoint}, which is the run's: {'; '.join(diff)}. To continue this run, put "
                f"config.yaml back as it was (the values \"in the run\"); to train with the edited options, "
                f"start a new run: cnnlab {self.study() or '<study>'} train --config {self.config_path} "
                "--out NEW_FOLDER"
            )
        return {**truth, **{k: saved[k] for k in may_differ if k in saved}}

    def _check_extension(self, config: dict) -> None:
        """``--epochs`` may extend a run, never cut off epochs it has already trained."""
        if "epochs" not in config or not self.last_checkpoint.is_file():
            return
        done = load_checkpoint(self.last_checkpoint).get("epoch")
        if isinstance(done, int) and config["epochs"] < done:
            raise CnnlabError(
                f"{param('resume')} {self.path} {param('epochs')} {config['epochs']}: the run has already trained "
                f"{done} epochs (checkpoints/last.pt); {param('epochs')} can extend a run, not shorten it"
            )

    @contextlib.contextmanager
    def lock(self, command: str, create: bool = False) -> Iterator[None]:
        """Hold the run folder for this process: one process at a time works on a run.

        An exclusive ``flock`` on ``.lock`` inside the folder; the kernel releases
        it when the process ends, however it ends, so a killed run leaves nothing
        stale. The file names the holder (PID, start, command) for the one refused.
        A folder that does not exist (or is a file) is not locked, unless ``create``
        makes it (and removes it again if it stays empty); the caller's own checks
        speak about it.
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows has no flock
            yield
            return
        made = create and not self.path.exists()
        if made:
            self.path.mkdir(parents=True)
        if not self.path.is_dir():
            yield
            return
        path = self.path / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise CnnlabError(
                    f"{self.path} is in use by another cnnlab process ({holder}); one process at a time works "
                    f"on a run folder: wait for it to end, or stop it, then run this again"
                ) from None
            try:  # the holder before us may have removed the file as it let go: hold the file that is there
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                     "command": command}).encode())
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # while still held, so that no process locks a file that is gone
            os.close(fd)
            if made:
                with contextlib.suppress(OSError):
                    self.path.rmdir()  # only when empty: a start that failed leaves no folder behind

    def new_run_files(self) -> list[Path]:
        """What :meth:`prepare` is about to create for a new run: the paths among the folders above
        the run, the run folder, ``config.yaml``, ``train.log`` and ``checkpoints/`` that do not exist yet."""
        chain = [p for p in reversed(self.path.absolute().parents) if not p.exists()]
        own = [self.path, self.config_path, self.log_path, self.checkpoints]
        return chain + [p for p in own if not p.exists()]

    def remove_new_run_files(self, created: list[Path]) -> None:
        """Undo a failed start: remove the files and the (then empty) folders of ``created``, nothing else."""
        for p in reversed(created):
            try:
                if p.is_dir() and not p.is_symlink():
                    p.rmdir()  # only when empty: whatever else is there stays
                elif p.exists():
                    p.unlink()
            except OSError:
                pass

    def read_config(self) -> dict:
        if not self.config_path.is_file():
            raise CnnlabError(f"{self.path} holds no cnnlab run (no config.yaml)")
        return upgrade_config(load_yaml(self.config_path))

    def write_metrics(self, rows: list[dict]) -> None:
        buf = io.StringIO()
        if rows:
            w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        atomic_write_text(self.metrics_path, buf.getvalue())

    def read_metrics(self) -> list[dict[str, float]]:
        return read_metrics(self.metrics_path)

    def read_summary(self) -> dict:
        """``summary.json`` ({} when there is none yet); a :class:`SummaryError` saying what to do when it is no
        JSON object."""
        if not self.summary_path.is_file():
            return {}
        try:
            summary = read_json(self.summary_path)
            why = None if isinstance(summary, dict) else f"it holds a JSON {type(summary).__name__}"
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, absurd nesting
            why = f"{type(e).__name__}: {str(e)[:120]}"
        except OSError as e:
            raise CnnlabError(f"cannot read {self.summary_path} ({e.strerror or e})") from None
        if why is not None:
            study = self.study() or "<study>"
            raise SummaryError(f"{self.summary_path} is not a JSON object ({why}); cnnlab {study} train --resume "
                               f"{self.path} rebuilds it from the run's checkpoints")
        return summary

    def set_aside_bad_summary(self) -> None:
        """Before a resume: a ``summary.json`` that is no JSON object is moved aside (kept as
        ``summary.json.unreadable``), so that training rebuilds it from the checkpoints."""
        try:
            self.read_summary()
        except SummaryError as e:
            aside = self.summary_path.with_name("summary.json.unreadable")
            os.replace(self.summary_path, aside)
            logger.warning("%s; it is moved to %s and rebuilt from the checkpoints", str(e).split(";")[0], aside)

    def study(self) -> str | None:
        """Which study made this run ("cifar" or "faces"), from its ``config.yaml``; None when it cannot tell."""
        try:
            return study_of(self.read_config()) if self.config_path.is_file() else None
        except CnnlabError:
            return None

    def expect_study(self, config_class: type) -> None:
        """A :class:`CnnlabError` naming the study the run belongs to when it is not the study of ``config_class``."""
        want, have = study_of({f.name: None for f in dataclasses.fields(config_class)}), self.study()
        if want is not None and have is not None and have != want:
            raise CnnlabError(f"{self.path} is a run of {_STUDIES[have]} (made by cnnlab {have} train), not of "
                              f"{_STUDIES[want]}; use the cnnlab {have} commands on it, "
                              f"e.g. cnnlab {have} figures {self.path}")

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.summary_path, summary)

    def update_summary(self, **values: Any) -> dict:
        summary = self.read_summary()
        summary.update(values)
        atomic_write_json(self.summary_path, summary)
        return summary

    def require_finished(self, allow_unfinished: bool = False) -> None:
        """An :class:`UnfinishedRun` naming the epoch reached and the epochs planned, unless the run has finished
        training (``summary.json`` status ``finished``) or ``allow_unfinished`` says to use it as it is (then a
        warning says so).

        Every command and API that uses a trained run asks this first: the best checkpoint of an unfinished
        run is not its result, training may still replace it.
        """
        if self.read_summary().get("status") == "finished":
            return
        done, planned = self._epoch_reached(), self.read_config().get("epochs")
        of = f" of {planned}" if isinstance(planned, int) else ""
        where = f"it stopped after epoch {done}{of}" if done is not None else f"no epoch{of} has ended yet"
        if not allow_unfinished:
            raise UnfinishedRun(f"{self.path} has not finished training: {where}; finish it with "
                                f"cnnlab {self.study() or '<study>'} train --resume {self.path}")
        best = self.best_epoch()
        logger.warning("%s has not finished training (%s); using its best checkpoint so far (epoch %s)",
                       self.path, where, "?" if best is None else best)

    def _epoch_reached(self) -> int | None:
        """The epochs ``checkpoints/last.pt`` has trained (None without a readable one)."""
        if not self.last_checkpoint.is_file():
            return None
        try:
            epoch = load_checkpoint(self.last_checkpoint).get("epoch")
        except CnnlabError:
            return None
        return epoch if isinstance(epoch, int) else None


def resume_config(cls: type, run_dir: str | Path, overrides: dict | None, runtime_fields: tuple[str, ...]):
    """The configuration of a run as ``cls`` (the one its checkpoint saved), with only ``runtime_fields``
    and ``--epochs`` overridden.

    A resumed run keeps what it computes; only how it runs (device, data location...) may change,
    and how many epochs it trains (a finished run is extended).
    """
    from dataclasses import replace

    from cnnlab.config import from_dict

    run = RunDir(run_dir)
    run.expect_study(cls)
    may_change = (*runtime_fields, *EXTENDABLE)
    saved = run.run_config(may_change)
    overrides = overrides or {}
    bad = sorted(k for k in overrides if k not in may_change and not _same(overrides[k], saved.get(k)))
    if bad:
        raise CnnlabError(
            f"{param('resume')} {run.path}: cannot change {', '.join(map(param, bad))} "
            f"of a run (only {', '.join(map(param, may_change))} may change)"
        )
    cfg = from_dict(cls, saved, source=str(run.config_path))
    return replace(cfg, **{k: v for k, v in overrides.items() if k in may_change})


def history_problem(epoch: int, history: list) -> str | None:
    """Why ``history`` (a checkpoint's metrics rows) is not that of a run ``epoch`` epochs in, or None.

    Rows are numbered 1..epoch, after an epoch-0 row where the untrained network was scored."""
    if epoch < 0:
        return f"its 'epoch' is {epoch}, expected the number of epochs trained (0 or more)"
    bad = next((i for i, r in enumerate(history) if not isinstance(r, dict) or type(r.get("epoch")) is not int), None)
    if bad is not None:
        return f"row {bad} of its 'history' has no epoch number"
    numbers = [r["epoch"] for r in history]
    first = 0 if numbers[:1] == [0] else 1
    if numbers != list(range(first, epoch + 1)):
        return f"its 'epoch' is {epoch} but its 'history' holds {_epochs(numbers)}, expected epochs {first}..{epoch}"
    return None


def _best_problem(best: dict) -> str | None:
    """Why a checkpoint's ``best`` is not ``{figure: value, "epoch": n}`` (the best validation so far), or None."""
    figures = [k for k, v in best.items() if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if type(best.get("epoch")) is not int or len(figures) != 1:
        return f"its 'best' is {sorted(map(str, best))[:4]}, expected a validation figure and its epoch"
    return None


def _epochs(numbers: list) -> str:
    """``"3 epochs (1, 2, 3)"``, ``"no epochs"``: a column of epoch numbers, for messages."""
    if not numbers:
        return "no epochs"
    shown = [f"{int(n)}" if isinstance(n, (int, float)) and float(n).is_integer() else repr(n) for n in numbers]
    listed = ", ".join(shown) if len(shown) <= 6 else f"{', '.join(shown[:3])}, ..., {shown[-1]}"
    return f"{len(numbers)} epoch{'s' if len(numbers) != 1 else ''} ({listed})"


def _read_holder(fd: int) -> str:
    """Who holds a lock file, from what it wrote there: ``PID 123, started ..., cifar train``."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"PID {int(info['pid'])}, started {info['started']}, running `{info['command']}`"
    except (OSError, ValueError, KeyError, TypeError):
        return "PID unknown: it is just starting"


def _same(a: Any, b: Any) -> bool:
    """Equal as saved values (a tuple from the command line equals the list YAML reads back)."""
    def norm(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v
    return norm(a) == norm(b)


def _show(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value, default=str)


def _differences(run: dict, other: dict, name: str, *, skip: tuple[str, ...] = (),
                 only: tuple[str, ...] | None = None) -> list[str]:
    """``"seed: 0 in the run, 7 in config.yaml"`` for each key whose value differs or is missing on one side."""
    out = []
    for k in [*run, *(k for k in other if k not in run)]:
        if k in skip or (only is not None and k not in only):
            continue
        if k not in other:
            out.append(f"{k}: {_show(run[k])} in the run, missing from {name}")
        elif k not in run:
            out.append(f"{k}: not in the run, {_show(other[k])} in {name}")
        elif not _same(run[k], other[k]):
            out.append(f"{k}: {_show(run[k])} in the run, {_show(other[k])} in {name}")
    return out


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"{path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        out.append({k: (float(v) if v not in ("", None) else float("nan")) for k, v in r.items()})
    return out


def command_line(argv: list[str] | None = None) -> str | None:
    """The ``cnnlab`` command this process runs, as a shell line; None when it is not the command line
    (a notebook or a test calling the functions). ``python -m cnnlab`` and torchrun show as ``cnnlab``."""
    argv = sys.argv if argv is None else argv
    if not argv:
        return None
    prog = Path(argv[0])
    if prog.name.startswith("cnnlab") or (prog.name == "__main__.py" and prog.parent.name == "cnnlab"):
        return shlex.join(["cnnlab", *argv[1:]])
    return None


# --- logging --------------------------------------------------------------------------

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# ``logger.info(..., extra=FILE_ONLY)``: a result line for the run's train.log that the console leaves out,
# because the command prints it once at its end with where the results went.
FILE_ONLY = {"console": False}


class _TqdmHandler(logging.StreamHandler):
    """Console handler that writes above any progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_logging(verbose: bool = False) -> None:
    """Console logging for the ``cnnlab`` logger; called once by the CLI."""
    root = logging.getLogger("cnnlab")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(h, _TqdmHandler) for h in root.handlers):
        h = _TqdmHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        h.addFilter(lambda record: getattr(record, "console", True))
        root.addHandler(h)
    root.propagate = False


@contextlib.contextmanager
def log_to_file(path: str | Path, enabled: bool = True) -> Iterator[None]:
    """Also write the ``cnnlab`` log into ``path`` (appending) while the block runs; nothing unless ``enabled``."""
    if not enabled:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    lg = logging.getLogger("cnnlab")
    lg.addHandler(handler)
    if lg.level == logging.NOTSET or lg.level > logging.INFO:
        lg.setLevel(logging.INFO)
    try:
        yield
    except KeyboardInterrupt as exc:
        logger.warning("interrupted by %s; what was saved until now is kept", str(exc) or "Ctrl-C (SIGINT)")
        raise
    finally:
        lg.removeHandler(handler)
        handler.close()
