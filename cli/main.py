"""The `seq2seq` command: a thin Typer app; one file per subcommand, torch imported only when a command runs."""

from __future__ import annotations

import os
import sys
from typing import Annotated, NoReturn

import typer

from seq2seq import __version__

app = typer.Typer(
    name="seq2seq",
    help="Train attention LSTM translation models, translate with them and score the output.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        deps = ", ".join(f"{name} {version(name)}" for name in ("torch", "sentencepiece", "sacrebleu"))
        typer.echo(f"seq2seq {__version__} ({deps})")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_print_version, is_eager=True, help="Print versions and exit.")
    ] = False,
) -> None:
    """Train attention LSTM translation models, translate with them and score the output."""


def _register() -> None:
    from cli import average, info, plot, score, serve, train, translate

    for module in (train, translate, score, average, info, plot, serve):
        module.register(app)


_register()


def main() -> None:
    """The console script (and `python -m seq2seq`): run the app, then leave at once with its exit code."""
    if sys.stdout is None:  # started with stdout closed (`>&-`): there is nowhere to put results
        print("error: stdout is closed; seq2seq writes its results there: redirect it (> FILE, or > /dev/null)",
              file=sys.stderr)
        _leave(1)
    try:
        app()
    except SystemExit as done:  # Typer ends every command this way; any other exception keeps its traceback
        _leave(done.code)


def _leave(code: int | str | None) -> NoReturn:
    """Flush stdout and stderr and end the process without the interpreter's teardown.

    That teardown is a garbage collection over torch's hundreds of thousands of objects, then the
    destruction of every module and of torch's static registries: about 0.5 s of a one-line
    translation here. Skipping it is safe because every file a command writes is closed (and renamed
    into place) before the command returns, and seq2seq starts no threads or processes that could be
    cut short.
    """
    if isinstance(code, str):  # SystemExit("message"), as Python would print it
        print(code, file=sys.stderr)
        code = 1
    if sys.gettrace() or sys.getprofile():  # a profiler or a coverage tool, which writes its results at exit
        sys.exit(code)
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader of a pipe left: a quiet failure
        code = code or 1
    except (OSError, ValueError) as error:  # what was still buffered could not be written (a full disk)
        print(f"error: stdout: {getattr(error, 'strerror', None) or error}", file=sys.stderr)
        code = code or 1
    os._exit(code or 0)
