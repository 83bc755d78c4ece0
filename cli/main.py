"""The `seq2seq` command: a thin Typer app; one file per subcommand, torch imported only when a command runs."""

from __future__ import annotations

import gc
from typing import Annotated

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
    from cli import average, info, plot, score, train, translate

    for module in (train, translate, score, average, info, plot):
        module.register(app)


_register()


def main() -> None:
    try:
        app()
    finally:
        # At exit, Python collects garbage over every object still alive, and torch's modules hold
        # hundreds of thousands: about 0.4 s of a one-line translation here. Frozen objects are left out
        # of that scan; their finalizers still run.
        gc.freeze()
