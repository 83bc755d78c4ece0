"""`seq2seq score`: corpus BLEU / chrF / TER, printed exactly as the `sacrebleu` command prints them."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.console import say, user_errors

FORMATS = ("json", "text")

EPILOG = """\
\b
Examples:
  seq2seq score ref.en -i hyp.en
  seq2seq score ref.en -i hyp.en -m bleu -m chrf -f text -w 2
  seq2seq score ref1.en ref2.en.gz -i hyp.en -m bleu,chrf,ter
  seq2seq translate ... | seq2seq score ref.en -b

Numbers and text are those of `sacrebleu REF... -i HYP` with the same options
(lines are read as sacrebleu reads them: trailing whitespace is dropped)."""


def score(
    references: Annotated[
        list[str],
        typer.Argument(
            metavar="REF", help="Reference file(s), plain or gzipped; several = multi-reference.", show_default=False
        ),
    ],
    hypotheses: Annotated[
        str, typer.Option("--input", "-i", metavar="FILE", help="Hypotheses, one a line; '-' is stdin.")
    ] = "-",
    metrics: Annotated[
        list[str],
        typer.Option(
            "--metrics",
            "-m",
            metavar="NAMES",
            help="bleu, chrf and/or ter: repeat (-m bleu -m chrf) or separate with commas (-m bleu,chrf).",
        ),
    ] = ["bleu"],  # noqa: B006 (Typer reads the default; it is never mutated)
    score_only: Annotated[bool, typer.Option("--score-only", "-b", help="Print only the number(s).")] = False,
    width: Annotated[int, typer.Option("--width", "-w", min=0, help="Decimals in the printed scores.")] = 1,
    output_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            metavar="json|text",
            help="Output format (default: $SACREBLEU_FORMAT if set, else json, as sacrebleu).",
            show_default=False,
        ),
    ] = None,
    lowercase: Annotated[
        bool, typer.Option("--lowercase", "-lc", help="Case-insensitive BLEU (BLEU only, as sacrebleu).")
    ] = False,
    tokenize: Annotated[
        str | None,
        typer.Option(
            "--tokenize", "-tok", metavar="NAME", show_default=False,
            help="BLEU tokenizer: 13a (default), intl, zh, char, none, ...",
        ),
    ] = None,
    chrf_word_order: Annotated[
        int, typer.Option("--chrf-word-order", "-cw", min=0, help="chrF word n-gram order; 2 = chrF++.")
    ] = 0,
) -> None:
    """Score hypotheses against references with BLEU, chrF and/or TER (sacrebleu's numbers and output)."""
    with user_errors():
        from seq2seq.errors import ConfigError

        names = _metric_names(metrics)
        fmt = _output_format(output_format)
        if fmt not in FORMATS:
            raise ConfigError(f"--format must be json or text, got {output_format!r}")
        hyp_lines, ref_streams = _read(hypotheses, references)

        from seq2seq.metrics import corpus_scores

        results = corpus_scores(
            hyp_lines, [lines for _, lines in ref_streams], names,
            lowercase=lowercase, tokenize=tokenize, chrf_word_order=chrf_word_order,
        )
        is_json = fmt == "json"
        lines = [r.score.format(width, score_only, r.signature, is_json) for r in results]
        typer.echo(_layout(lines, is_json))


def _metric_names(values: list[str]) -> list[str]:
    """Flatten `-m bleu -m chrf`, `-m bleu,chrf` and `-m "bleu chrf"` into one list of names."""
    return [name.lower() for value in values for name in re.split(r"[,\s]+", value.strip()) if name]


def _output_format(value: str | None) -> str:
    """-f wins; otherwise $SACREBLEU_FORMAT when it names a format (sacrebleu honours it too); else json."""
    if value is not None:
        return value.lower()
    from_env = os.environ.get("SACREBLEU_FORMAT", "").lower()
    return from_env if from_env in FORMATS else "json"


def _read(hypotheses: str, references: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Read hypotheses and references the way sacrebleu does (rstripped lines) and check they are parallel."""
    from seq2seq.errors import DataError
    from seq2seq.metrics import METRICS, check_parallel
    from seq2seq.textio import display_name, read_lines

    for ref in references:
        if ref in METRICS and not Path(ref).exists():
            raise DataError(f"{ref}: no such file (to ask for several metrics write -m bleu -m {ref} or -m bleu,{ref})")
    streams = [(display_name(ref), [line.rstrip() for line in read_lines(ref)]) for ref in references]
    if hypotheses == "-" and sys.stdin.isatty():
        say("reading hypotheses from stdin (end with Ctrl-D; or give a file with -i)")
    hyp_lines = [line.rstrip() for line in read_lines(hypotheses)]
    check_parallel((display_name(hypotheses), hyp_lines), streams)
    return hyp_lines, streams


def _layout(lines: list[str], is_json: bool) -> str:
    """Join formatted scores as sacrebleu's print_single_results does: a JSON list, or text aligned on '='."""
    if is_json:
        return "[\n" + ",\n".join(lines) + "\n]" if len(lines) > 1 else lines[0]
    if len(lines) == 1 or "=" not in lines[0]:
        return "\n".join(lines)
    width = max(line.index("=") - 1 for line in lines)
    return "\n".join(f"{line[: line.index('=') - 1]:>{width}}{line[line.index('=') - 1 :]}" for line in lines)


def register(app: typer.Typer) -> None:
    app.command("score", epilog=EPILOG, no_args_is_help=True)(score)
