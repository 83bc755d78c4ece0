"""Errors a user can cause. The CLI turns each into one line on stderr and an exit code."""


class Seq2SeqError(Exception):
    """Base class: a problem with the user's input, settings or files, not a bug in seq2seq."""

    exit_code = 1


class ConfigError(Seq2SeqError):
    """A setting is unknown, mistyped or out of range."""

    exit_code = 2


class DataError(Seq2SeqError):
    """A text file cannot be read as UTF-8 lines, or parallel files disagree."""


class CheckpointError(Seq2SeqError):
    """A model file is missing, corrupt, unsafe or of another format."""


class OutOfMemory(Seq2SeqError):
    """The device had no memory left for a batch, even after what could be done about it."""


class WorkerDied(Seq2SeqError):
    """A translation worker process ended without an answer: killed, most often by the system for lack of memory."""
