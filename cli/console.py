"""The one place that talks to the terminal: a stderr console, and library errors turned into exit codes."""

from __future__ import annotations

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
# Data goes to stdout; everything a person reads goes here. rich honours NO_COLOR.
err = Console(stderr=True, highlight=False, soft_wrap=True, quiet=not SPEAKS)


def say(message: str) -> None:
    """One plain line for the user on stderr (markup in `message` is not interpreted)."""
    err.print(escape(message))


def say_error(message: str) -> None:
    """An error as exactly one line on stderr, whatever line breaks the message holds."""
    err.print(f"[bold red]error:[/] {escape(' '.join(message.splitlines()))}")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a library error into one line on stderr and its exit code; a closed stdout pipe into a quiet exit."""
    try:
        yield
    except Seq2SeqError as error:
        say_error(str(error))
        raise typer.Exit(error.exit_code) from None
    except BrokenPipeError:
        # `seq2seq translate ... | head -1`: the reader left. Point stdout at /dev/null so the
        # interpreter's final flush does not raise again, and exit quietly (Python docs' recipe).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(1) from None
