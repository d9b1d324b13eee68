"""The one exception type a user is meant to read.

Anything raised as :class:`CnnlabError` is a problem with the user's input (a
file, a folder, an option); the CLI prints its message and exits with status 2,
without a traceback unless ``--debug`` is given.
"""


class CnnlabError(Exception):
    """A problem with the user's input, worded for the user."""


class ConfigError(CnnlabError, ValueError):
    """An option or config field has a value it cannot take."""


class DataError(CnnlabError):
    """A data file or folder is missing, unreadable or of the wrong layout."""


class CheckpointError(CnnlabError):
    """A checkpoint cannot be loaded into the model at hand."""


class OutOfMemory(CnnlabError):
    """The network ran out of memory scoring batches of ``batch_size`` images; smaller batches need less."""

    def __init__(self, message: str, batch_size: int):
        super().__init__(message)
        self.batch_size = batch_size


class TrainingDiverged(CnnlabError):
    """The loss became NaN or infinite."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or ``kill``'s polite stop), handled everywhere as Ctrl-C is."""

    def __init__(self) -> None:
        super().__init__("SIGTERM")
