"""`seq2seq plot`: a run's validation curves as a picture (matplotlib, the optional `plot` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import help_epilog, user_errors

EPILOG = help_epilog("""\
\b
Examples:
  seq2seq plot runs/de-en                     # writes runs/de-en/curves.png
  seq2seq plot runs/de-en -o curves.png --width 1600 --height 1200
  seq2seq plot runs/de-en/metrics.jsonl -o curves.svg

Validation loss and perplexity and each metric the run validated with (BLEU, chrF, WER, CER, TER,
exact match; training loss when the run logs it), against steps on the left and minutes on the
right; stars mark where best.pt was written. Needs matplotlib: pip install 'seq2seq[plot]'. The
picture's path is printed on stdout.""")

Opt = typer.Option


def plot(
    run: Annotated[
        Path, typer.Argument(metavar="RUN", show_default=False,
                             help="Run folder written by `seq2seq train`, or its metrics.jsonl.")
    ],
    output: Annotated[
        Path | None, Opt("--output", "-o", metavar="FILE", show_default=False,
                         help="Picture to write: .png, .pdf or .svg. \\[default: RUN/curves.png]")
    ] = None,
    width: Annotated[int, Opt(min=100, help="Width in pixels.")] = 1200,
    height: Annotated[int, Opt(min=100, help="Height in pixels.")] = 900,
) -> None:
    """Draw a run's training curves from its metrics.jsonl into a picture."""
    with user_errors():
        from seq2seq import plot_curves, read_metrics

        rows = read_metrics(run)
        target = output or (run if run.is_dir() else run.parent) / "curves.png"
        plot_curves(rows, target, width=width, height=height, title=str(run))
        typer.echo(str(target))


def register(app: typer.Typer) -> None:
    app.command("plot", epilog=EPILOG, no_args_is_help=True)(plot)
