"""`seq2seq average`: write the mean of several checkpoints' weights as one model file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import help_epilog, say, user_errors

EPILOG = help_epilog("""\
\b
Examples:
  seq2seq average runs/de-en/step-*.pt -o runs/de-en/averaged.pt
  seq2seq translate -m runs/de-en/averaged.pt < test.de

Checkpoints of one run (same model settings and tokenizers) only; keep several with
--set train.keep_best=5 while training.""")


def average(
    models: Annotated[list[Path], typer.Argument(metavar="MODEL...", help="Checkpoints of one run.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the averaged model goes.", show_default=False)],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print errors only.")] = False,
) -> None:
    """Average the weights of several checkpoints into one model file."""
    with user_errors():
        from seq2seq import average_checkpoints, save_checkpoint

        merged = average_checkpoints(models)
        save_checkpoint(output, config=merged.config, tokenizers=merged.tokenizers, model=merged.model,
                        step=merged.step, info=merged.info)
        if not quiet:
            steps = ", ".join(f"{step:,}" for step in sorted(merged.info["averaged_steps"]))
            say(f"averaged {len(models)} checkpoints (steps {steps}) into {output}")


def register(app: typer.Typer) -> None:
    app.command(epilog=EPILOG)(average)
