"""The one exception type a user is meant to read.

Anything raised as :class:`CnnlabError` is a problem with the user's input (a
file, a folder, an option); the CLI prints its message and exits with status 2,
without a traceback unless ``--debug`` is given. :func:`shown_path` is how a
message, or a command's printed result, shows a path.

A message speaks of values and of the parameters that carried them, in the
words of whoever reads it: a parameter is written :func:`param` (``width``),
which the message reads as the parameter's name from Python and as the flag
that carried the value on the command line (``--width``, see
:meth:`CnnlabError.worded`). The library never has to know the flags.
"""

import os
import re
from collections.abc import Callable

_MARK = "\x1f"  # around a parameter's name inside a message; never shown
_MARKED = re.compile(f"{_MARK}([A-Za-z_][A-Za-z0-9_]*){_MARK}")


def param(name: str) -> str:
    """The parameter or config field ``name`` as a message names it: ``name`` read from Python, the flag that
    carried it read on the command line (:meth:`CnnlabError.worded`)."""
    return f"{_MARK}{name}{_MARK}"


class CnnlabError(Exception):
    """A problem with the user's input, worded for the user (parameters by name, see :func:`param`)."""

    def __str__(self) -> str:
        return _MARKED.sub(r"\1", super().__str__())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def worded(self, flag: Callable[[str], str] = param) -> str:
        """The message with each parameter named by ``flag(name)``: the command line gives its flags. The
        default, :func:`param`, keeps the parameters marked, for a message built around this one."""
        return _MARKED.sub(lambda m: flag(m.group(1)), super().__str__())


class ConfigError(CnnlabError, ValueError):
    """An option or config field has a value it cannot take."""


class DataError(CnnlabError):
    """A data file or folder is missing, unreadable or of the wrong layout."""


class CheckpointError(CnnlabError):
    """A checkpoint cannot be loaded into the model at hand."""


class TargetRefused(CnnlabError):
    """A file is to be written where something stands that must be kept (a link, a device, a run's
    checkpoint, a file nobody agreed to replace); ``replaceable`` when consent to replace it would do."""

    def __init__(self, path, reason: str, replaceable: bool = False) -> None:
        super().__init__(f"{shown_path(path)} {reason}")
        self.path, self.reason, self.replaceable = path, reason, replaceable


class OutOfMemory(CnnlabError):
    """The network ran out of memory scoring batches of ``batch_size`` images; smaller batches need less."""

    def __init__(self, message: str, batch_size: int):
        super().__init__(message)
        self.batch_size = batch_size


class TrainingDiverged(CnnlabError):
    """The loss became NaN or infinite."""


class UnfinishedRun(CnnlabError):
    """A run that has not finished training, given where a finished one is expected."""


class NonFiniteOutput(CnnlabError):
    """A network gave NaN or infinite outputs, from which no answer can be given."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or ``kill``'s polite stop), handled everywhere as Ctrl-C is."""

    def __init__(self) -> None:
        super().__init__("SIGTERM")


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as one line of text: as given, or quoted with its control characters escaped
    (``'a\\nb.onnx'``) when it holds any, so a printed value never spans two lines."""
    text = os.fspath(path)
    text = text if isinstance(text, str) else os.fsdecode(text)
    return text if text.isprintable() else repr(text)
