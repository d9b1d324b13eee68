"""A run is a folder: config.yaml, metrics.csv, summary.json, checkpoints/, figures/, train.log.

Every file in it is written atomically, so a crash leaves the previous version.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from cnnlab.config import load_yaml
from cnnlab.errors import CnnlabError
from cnnlab.files import atomic_write_json, atomic_write_text, read_json

logger = logging.getLogger(__name__)


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

    def prepare(self, config: dict, resume: bool, option: str = "--out", ignore: tuple[str, ...] = ()) -> None:
        """Check the folder can take this run, create it and write ``config.yaml``.

        A folder that already holds a run is only continued with ``--resume``, and
        never with a different configuration (bar the ``ignore`` fields, which do
        not change results): nothing already written is lost.
        """
        if self.path.exists() and not self.path.is_dir():
            raise CnnlabError(f"{option} {self.path} is a file, expected a folder")
        if self.exists():
            saved = self.read_config()
            if not resume:
                what = "this run" if saved == config else "a different run"
                raise CnnlabError(
                    f"{option} {self.path} already holds {what} (config.yaml); "
                    f"continue it with --resume {self.path}, or choose another {option}"
                )
            diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k) and k not in ignore)
            if diff:
                raise CnnlabError(
                    f"--resume {self.path}: the saved config differs in {', '.join(diff)}; "
                    "a resumed run keeps the options it was started with"
                )
        elif self.path.is_dir() and any(p for p in self.path.iterdir() if p.name != "train.log"):
            raise CnnlabError(f"{option} {self.path} is not empty and holds no cnnlab run; choose an empty folder")
        if resume:
            for tmp in self.path.rglob(".*.tmp"):  # left by a write that was killed; never read
                tmp.unlink(missing_ok=True)
        # config.yaml first: a folder killed right after this is a run that --resume continues.
        if not self.exists():
            atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def read_config(self) -> dict:
        if not self.config_path.is_file():
            raise CnnlabError(f"{self.path} holds no cnnlab run (no config.yaml)")
        return load_yaml(self.config_path)

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
        return read_json(self.summary_path) if self.summary_path.is_file() else {}

    def update_summary(self, **values: Any) -> dict:
        summary = self.read_summary()
        summary.update(values)
        atomic_write_json(self.summary_path, summary)
        return summary


def resume_config(cls: type, run_dir: str | Path, overrides: dict | None, runtime_fields: tuple[str, ...]):
    """The saved config of a run as ``cls``, with only ``runtime_fields`` overridden.

    A resumed run keeps what it computes; only how it runs (device, data location...) may change.
    """
    from dataclasses import replace

    from cnnlab.config import from_dict

    run = RunDir(run_dir)
    saved = run.read_config()
    overrides = overrides or {}
    bad = sorted(k for k in overrides if k not in runtime_fields and overrides[k] != saved.get(k))
    if bad:
        raise CnnlabError(
            f"--resume {run.path}: cannot change {', '.join('--' + b.replace('_', '-') for b in bad)} "
            f"of a run (only {', '.join('--' + f.replace('_', '-') for f in runtime_fields)} may change)"
        )
    cfg = from_dict(cls, saved, source=str(run.config_path))
    return replace(cfg, **{k: v for k, v in overrides.items() if k in runtime_fields})


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


class log_to_file:
    """Context manager: also write the ``cnnlab`` log into ``path`` (appending)."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path, self.enabled, self.handler = Path(path), enabled, None

    def __enter__(self):
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handler = logging.FileHandler(self.path, encoding="utf-8")
            self.handler.setFormatter(logging.Formatter(_FORMAT))
            lg = logging.getLogger("cnnlab")
            lg.addHandler(self.handler)
            if lg.level == logging.NOTSET or lg.level > logging.INFO:
                lg.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        if self.handler is not None:
            logging.getLogger("cnnlab").removeHandler(self.handler)
            self.handler.close()
        return False
