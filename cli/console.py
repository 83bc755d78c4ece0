"""The one place that talks to the terminal: a stderr console, and library errors turned into exit codes."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from seq2seq import Seq2SeqError

# Under torchrun every rank runs this command; only rank 0 speaks for the run (the library shares every
# decision and error with it), read from torchrun's RANK so that no torch import is needed here.
SPEAKS = os.environ.get("RANK", "0") in ("", "0")
# What a write to stdout fails with when the disk behind it is full or failing (`> /dev/full`): the library turns
# its own files' errors into Seq2SeqErrors naming them, so an OSError like these without a file name is stdout's.
STDOUT_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)
# Data goes to stdout; everything a person reads goes here. rich honours NO_COLOR.
err = Console(stderr=True, highlight=False, soft_wrap=True, quiet=not SPEAKS)


def help_epilog(text: str) -> str:
    """A command's epilog as rich help shows it well: the examples (the paragraph that starts with \\b) line
    by line, the prose joined so that it wraps at the terminal's width, and square brackets shown as typed,
    not read as markup."""
    paragraphs = [part if part.startswith("\b") else " ".join(part.splitlines()) for part in text.split("\n\n")]
    return "\n\n".join(paragraphs).replace("[", "\\[")


def say(message: str) -> None:
    """One plain line for the user on stderr (markup in `message` is not interpreted)."""
    err.print(escape(message))


def say_error(message: str) -> None:
    """An error as exactly one line on stderr, whatever line breaks the message holds."""
    err.print(f"[bold red]error:[/] {escape(' '.join(message.splitlines()))}")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a library error into one line on stderr and its exit code, a failed write to stdout into one line and
    exit 1, and a closed stdout pipe into a quiet exit."""
    try:
        yield
    except Seq2SeqError as error:
        say_error(str(error))
        raise typer.Exit(error.exit_code) from None
    except OSError as error:
        if isinstance(error, BrokenPipeError) or error.filename is not None or error.errno not in STDOUT_ERRORS:
            raise
        say_error(f"stdout: {os.strerror(error.errno)}")
        _discard_stdout()
        raise typer.Exit(1) from None
    except BrokenPipeError:
        # `seq2seq translate ... | head -1`: the reader left: exit quietly (Python docs' recipe).
        _discard_stdout()
        raise typer.Exit(1) from None


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the final flush of what is still buffered does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
