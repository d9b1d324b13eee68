"""``cnnlab faces search``: random search over training options with Optuna, resumable and shareable.

Each trial is one ordinary run folder, ``OUT/trial-0003/``, trained by
:func:`cnnlab.faces.train.train`. Trials are ranked by their best
**validation ROC AUC**: the validation loss depends on the margin (a margin
of 2 makes every different-people term four times larger), so it cannot
compare trials with different margins, while the AUC only asks whether
same-person pairs are closer than different-people pairs. Ties in that AUC
(short trials whose best checkpoint is the untrained network score alike) go
to the later best epoch, then to the lower validation loss; see
:func:`rank_key`. The test pairs never choose anything.

The study lives in an Optuna storage: by default ``sqlite:///OUT/search.db``.
Running the command again continues the study: finished trials are kept, a
trial whose process died (killed, machine rebooted) is marked failed, and
only the trials still missing to reach ``--trials`` finished ones are run.
Several workers, on one machine or many, can share a study through a
PostgreSQL or MySQL URL (``postgresql://user:password@host/db``), which
Optuna's RDBStorage takes as it is (install the matching SQLAlchemy driver,
e.g. ``psycopg2-binary`` or ``PyMySQL``, on each worker); give every worker
its own ``--out`` or a shared folder.

Sampling is Optuna's ``RandomSampler``, re-seeded for every trial from
``--search-seed`` and the trial number, so trial n draws the same values
whether the search ran in one go, was resumed, or was split between workers.

A dead trial is recognised two ways: on the machine that ran it, by its
process id no longer being alive (immediately); elsewhere, by Optuna's
heartbeat going quiet for longer than its grace period.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import socket
import typing
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from cnnlab.config import FaceSearchConfig, FaceTrainConfig, check_type, load_yaml, type_name
from cnnlab.errors import CnnlabError, ConfigError, TrainingDiverged, param
from cnnlab.files import atomic_write_text
from cnnlab.run import FILE_ONLY

logger = logging.getLogger(__name__)

DEFAULT_SPACE: dict[str, dict] = {
    # Each range holds the study's best: lr 1e-3, margin 1.0, step 10, gamma 0.1, 20 epochs.
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "margin": {"type": "float", "low": 0.5, "high": 2.0},
    "step_size": {"type": "int", "low": 5, "high": 15},
    "gamma": {"type": "categorical", "choices": [0.1, 0.3, 0.5]},
    "epochs": {"type": "categorical", "choices": [10, 20, 30]},
}
"""The default space of the contrastive loss (the study's); :func:`default_space` fits it to the others."""

LOSS_SPACES: dict[str, dict[str, dict]] = {
    # Each margin range holds the loss's default (FaceNet's 0.2; CosFace's 0.35; ArcFace's 0.5 rad) inside what
    # the training options accept; the margin softmaxes also draw their scale s around the default 30, down to
    # the 8-16 that CosFace's bound asks of a few thousand people.
    "triplet": {"margin": {"type": "float", "low": 0.05, "high": 0.5}},
    "cosface": {"margin": {"type": "float", "low": 0.1, "high": 0.5},
                "scale": {"type": "float", "low": 8.0, "high": 64.0, "log": True}},
    "arcface": {"margin": {"type": "float", "low": 0.2, "high": 0.7},
                "scale": {"type": "float", "low": 8.0, "high": 64.0, "log": True}},
}
LOSS_SPACES["subcenter-arcface"] = LOSS_SPACES["arcface"]


def default_space(loss: str = "contrastive") -> dict[str, dict]:
    """The space a search draws from without ``--space``: ``DEFAULT_SPACE`` with the margin (and for the margin
    softmaxes the scale) of ``loss``; a contrastive margin of 2 would be refused by CosFace."""
    space = {k: dict(v) for k, v in DEFAULT_SPACE.items()}
    space.update({k: dict(v) for k, v in LOSS_SPACES.get(loss, {}).items()})
    return space

HEARTBEAT_S = 60
GRACE_S = 180
TRIALS_CSV = "trials.csv"
BEST_PARAMS = "best_params.yaml"
BEST_RUN = "best_run.txt"


# --------------------------------------------------------------------------- the space


def read_space(path: str | os.PathLike | None, loss: str = "contrastive") -> dict[str, dict]:
    """The search space: :func:`default_space` of ``loss``, or a YAML file of the same shape, checked.

    Each key is a ``cnnlab faces train`` option (underscores, e.g.
    ``step_size``); each value one of::

        {type: float, low: 1e-4, high: 1e-2, log: true}   # optional step (not with log)
        {type: int, low: 5, high: 15}                      # optional step, log
        {type: categorical, choices: [0.1, 0.5]}

    Bounds, steps and choices must be of the option's type (a choice of
    ``lr`` is a number, of ``loss`` a string), as in ``--config`` files.
    """
    if path is None:
        return default_space(loss)
    data = load_yaml(path)
    where = f"{param('space')} {path}"
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where}: expected a mapping of option names to ranges")
    hints = typing.get_type_hints(FaceTrainConfig)
    for key in data:
        if key not in hints:
            raise ConfigError(f"{where}: {key!r} is not an option of cnnlab faces train")
    return {key: _read_range(f"{where}: {key}", spec, hints[key]) for key, spec in data.items()}


_RANGE_KEYS = {"float": ("type", "low", "high", "log", "step"), "int": ("type", "low", "high", "log", "step"),
               "categorical": ("type", "choices")}


def _read_range(where: str, spec: Any, hint: Any) -> dict:
    """One option's range, its values checked against the option's type ``hint``."""
    if not isinstance(spec, dict) or spec.get("type") not in _RANGE_KEYS:
        raise ConfigError(f"{where}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
    kind = spec["type"]
    a_range = f"{'an' if kind == 'int' else 'a'} {kind} range"
    extra = sorted(map(str, set(spec) - set(_RANGE_KEYS[kind])))
    if extra:
        raise ConfigError(f"{where}: {a_range} takes {', '.join(_RANGE_KEYS[kind][1:])}, not {', '.join(extra)}")
    if kind == "categorical":
        if not isinstance(spec.get("choices"), list) or not spec["choices"]:
            raise ConfigError(f"{where}: a categorical range needs a non-empty list 'choices'")
        return {"type": kind, "choices": [check_type(c, hint, f"{where}: choices") for c in spec["choices"]]}
    takes = {t for t in typing.get_args(hint) if t is not type(None)} or {hint}
    if not takes & ({float} if kind == "float" else {int, float}):
        raise ConfigError(f"{where}: {a_range} for an option that takes {type_name(hint)}; "
                          f"use {'type: int or ' if int in takes else 'type: '}categorical")
    number = float if kind == "float" else int
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: {a_range} needs numbers 'low' and 'high'")
    low, high = (check_type(spec[k], number, f"{where}: {k}") for k in ("low", "high"))
    out = {"type": kind, "low": low, "high": high, "log": check_type(spec.get("log", False), bool, f"{where}: log")}
    if not low <= high:
        raise ConfigError(f"{where}: low ({low}) must not exceed high ({high})")
    if out["log"] and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0")
    if spec.get("step") is not None:
        out["step"] = check_type(spec["step"], number, f"{where}: step")
        if out["step"] <= 0:
            raise ConfigError(f"{where}: step: expected a positive number, got {spec['step']!r}")
        if out["log"] and (kind == "float" or out["step"] != 1):
            raise ConfigError(f"{where}: {a_range} takes step or log, not both")
    return out


def check_space(base: FaceTrainConfig, space: dict[str, dict], where: str) -> None:
    """Refuse a space whose bounds or choices the training options refuse (a margin of 0 for the
    contrastive loss), before any trial runs; each option is tried alone in ``base``."""
    for key, spec in space.items():
        if spec["type"] == "categorical":
            values = [("choice", v) for v in spec["choices"]]
        else:
            top = spec["high"]
            if spec.get("step"):  # the largest value the steps reach
                top = spec["low"] + (spec["high"] - spec["low"]) // spec["step"] * spec["step"]
            values = [("low", spec["low"]), ("high", top)]
        for what, v in values:
            try:
                replace(base, **{key: v})
            except ConfigError as e:
                raise ConfigError(f"{where}: {key}: the {what} {v!r} is refused by the training options "
                                  f"({e.worded()})") from None


def suggest(trial, space: dict[str, dict]) -> dict[str, Any]:
    """One value per option of ``space``, drawn by the trial's sampler."""
    params = {}
    for key, spec in space.items():
        if spec["type"] == "float":
            params[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]),
                                              log=bool(spec.get("log", False)), step=spec.get("step"))
        elif spec["type"] == "int":
            params[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)),
                                            log=bool(spec.get("log", False)))
        else:
            params[key] = trial.suggest_categorical(key, list(spec["choices"]))
    return params


# --------------------------------------------------------------------------- optuna pieces


def _sampler(seed: int):
    import optuna

    class TrialSeededRandomSampler(optuna.samplers.RandomSampler):
        """RandomSampler whose draws for trial n depend on (seed, n) only."""

        def before_trial(self, study, trial):
            rng = getattr(self._rng, "rng", self._rng)  # optuna >= 3.? wraps the RandomState lazily
            rng.seed((seed * 1_000_003 + trial.number) % (2**32))

    return TrialSeededRandomSampler(seed=seed)


def storage_url(cfg: FaceSearchConfig, out: Path) -> str:
    return cfg.storage or f"sqlite:///{(out / 'search.db').resolve()}"


def _open_study(cfg: FaceSearchConfig, out: Path):
    import optuna

    url = storage_url(cfg, out)
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental; they are what finds dead trials
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except ImportError as e:
        raise ConfigError(f"{param('storage')} {url}: the database driver is not installed ({e}); install the "
                          "SQLAlchemy driver for it, e.g. pip install psycopg2-binary (PostgreSQL) or PyMySQL "
                          "(MySQL)") from None
    except Exception as e:
        raise ConfigError(f"{param('storage')} {url}: cannot open the study storage ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    study = optuna.create_study(study_name=cfg.study, storage=storage, sampler=_sampler(cfg.search_seed),
                                direction="maximize", load_if_exists=True,
                                pruner=(optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
                                        if cfg.prune else optuna.pruners.NopPruner()))
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"{param('study')} {cfg.study}: an existing study in {url} that minimises; choose another "
                          "name")
    return study, storage


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def fail_dead_trials(study, storage) -> list[int]:
    """Mark failed the RUNNING trials whose process is gone; return their numbers.

    On this machine a trial records its host and process id, so a killed one
    is found at once; trials of other machines are left to Optuna's heartbeat
    (``fail_stale_trials``), which waits for the grace period.
    """
    import optuna
    from optuna.trial import TrialState

    failed = []
    host, me = socket.gethostname(), os.getpid()
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and isinstance(pid, int) and pid != me and not _pid_alive(pid):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(t.number)
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    except Exception as e:
        logger.debug("fail_stale_trials: %s", e)
    failed += sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                     if t.number in running)
    for n in failed:
        logger.warning("trial %d was interrupted (its process is gone); marked failed", n)
    return failed


# --------------------------------------------------------------------------- outputs


def trial_rows(study) -> list[dict]:
    """One row per trial: number, state, validation ROC AUC, parameters, run folder and a few figures."""
    rows = []
    keys = sorted({k for t in study.trials for k in t.params})
    for t in study.trials:
        row = {"number": t.number, "state": t.state.name,
               "val_roc_auc": t.value if t.value is not None else math.nan}
        row.update({k: t.params.get(k, "") for k in keys})
        for k in ("best_epoch", "best_val_loss", "train_seconds", "run_dir"):
            row[k] = t.user_attrs.get(k, "")
        rows.append(row)
    return rows


RANKING = ("trials are ranked by validation ROC AUC (the validation loss depends on the margin); ties go to "
           "the later best epoch, then to the lower validation loss")


def rank_key(trial) -> tuple[float, int, float]:
    """Larger is better: validation ROC AUC, then the later best epoch (epoch 0 is the untrained
    network, so an earlier best trained less), then the lower validation loss."""
    epoch, loss = trial.user_attrs.get("best_epoch"), trial.user_attrs.get("best_val_loss")
    return (trial.value, epoch if isinstance(epoch, int) else -1,
            -loss if isinstance(loss, (int, float)) and math.isfinite(loss) else -math.inf)


def write_outputs(study, out: Path) -> dict | None:
    """``trials.csv``, ``best_params.yaml`` and ``best_run.txt`` (the best trial's run folder), atomically."""
    from optuna.trial import TrialState

    rows = trial_rows(study)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(out / TRIALS_CSV, buf.getvalue())
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not complete:
        return None
    best = max(complete, key=rank_key)
    info = {"trial": best.number, "val_roc_auc": best.value, "best_epoch": best.user_attrs.get("best_epoch"),
            "run_dir": best.user_attrs.get("run_dir"), "params": dict(best.params)}
    atomic_write_text(out / BEST_PARAMS, yaml.safe_dump(info, sort_keys=False))
    atomic_write_text(out / BEST_RUN, f"{best.user_attrs.get('run_dir', '')}\n")
    return info


# --------------------------------------------------------------------------- the search


def search(base: FaceTrainConfig, cfg: FaceSearchConfig, out: str | os.PathLike, progress: bool = True) -> dict:
    """Run (or continue) the random search; return a summary with the best trial and the counts.

    ``base`` holds every training option the space does not set; each trial
    replaces the space's options in it and trains ``OUT/trial-NNNN``.
    """
    import optuna
    from optuna.trial import TrialState

    from cnnlab.faces.train import train

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CnnlabError(f"{param('out')} {out} is a file, expected a folder")
    space = read_space(cfg.space, base.loss)  # before the folder exists: a bad space leaves nothing behind
    check_space(base, space, f"{param('space')} {cfg.space}" if cfg.space
                else f"the default search space of the {base.loss} loss")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study, storage = _open_study(cfg, out)
    except CnnlabError:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    fail_dead_trials(study, storage)
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    missing = max(0, cfg.trials - complete)
    logger.info("study %r in %s: %d finished trial(s), %d to run", cfg.study, storage_url(cfg, out), complete,
                missing)

    def objective(trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = suggest(trial, space)
        try:
            trial_cfg = replace(base, **params)
        except ConfigError as e:
            raise CnnlabError(f"{param('space')}: trial {trial.number} drew values the training options refuse: "
                              f"{e.worded()}") from None
        run_dir = out / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", os.path.relpath(run_dir, out))
        logger.info("trial %d: %s -> %s", trial.number, ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()),
                    run_dir)

        def report(row: dict) -> None:
            trial.report(row["val_roc_auc"], step=int(row["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation ROC AUC {row['val_roc_auc']:.4f} at epoch {row['epoch']}")

        summary = train(trial_cfg, run_dir, resume=False, progress=progress, on_epoch=report if cfg.prune else None)
        for k in ("best_epoch", "best_val_loss", "train_seconds"):
            trial.set_user_attr(k, summary.get(k))
        logger.info("trial %d: validation ROC AUC %.4f (best epoch %s)", trial.number, summary["best_val_roc_auc"],
                    summary.get("best_epoch"))
        return float(summary["best_val_roc_auc"])

    def after_trial(study, trial) -> None:
        write_outputs(study, out)

    if missing:
        quiet = _QuietTrialErrors()
        optuna_log = logging.getLogger("optuna.study._optimize")
        optuna_log.addFilter(quiet)
        try:
            study.optimize(objective, n_trials=missing, catch=(TrainingDiverged,), callbacks=[
                after_trial, optuna.study.MaxTrialsCallback(cfg.trials, states=(TrialState.COMPLETE,))])
        except KeyboardInterrupt:  # Optuna has marked the trial failed; a rerun runs it again
            write_outputs(study, out)
            raise
        finally:
            optuna_log.removeFilter(quiet)
    best = write_outputs(study, out)
    states = [t.state.name for t in study.trials]
    result = {"study": cfg.study, "storage": storage_url(cfg, out), "trials": len(states),
              "complete": states.count("COMPLETE"), "failed": states.count("FAIL"),
              "pruned": states.count("PRUNED"), "best": best}
    if best:
        logger.info("best trial %d: validation ROC AUC %.4f, %s (%s)", best["trial"], best["val_roc_auc"],
                    best["params"], out / best["run_dir"], extra=FILE_ONLY)
    return result


class _QuietTrialErrors(logging.Filter):
    """Optuna logs every failed trial with its traceback. An error worded for the user that ends the
    search (a value the options refuse, Ctrl-C, SIGTERM) is said once, by the CLI; a diverged trial,
    after which the search goes on, keeps its one line without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TrainingDiverged):
            record.exc_info, record.exc_text = None, None
            return True
        return not isinstance(exc, (CnnlabError, KeyboardInterrupt))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
