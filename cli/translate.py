"""`seq2seq translate`: a filter from source lines to target lines, one output line (or n-best block) per input line."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO, Annotated

import typer

from cli.console import say, user_errors

EPILOG = """\
\b
Examples:
  seq2seq translate -m runs/de-en/best.pt -i test.de -o test.en
  cat test.de | seq2seq translate -m runs/de-en/best.pt > test.en
  seq2seq translate -m runs/de-en/best.pt --beam-size 1 < test.de      # greedy
  seq2seq translate -m runs/de-en/best.pt --nbest 5 < test.de          # id ||| hypothesis ||| score

Scores are the model's log-probability of the output pieces plus EOS (natural log), before any
length penalty. Typed at a terminal, each line is answered as soon as it is entered."""

Opt = typer.Option


def translate(
    model: Annotated[Path, Opt("--model", "-m", help="Checkpoint (.pt) written by `seq2seq train`.", show_default=False)],
    input_path: Annotated[str, Opt("--input", "-i", metavar="FILE", help="Source lines; '-' is stdin.")] = "-",
    output_path: Annotated[str, Opt("--output", "-o", metavar="FILE", help="Where translations go; '-' is stdout. A file appears only when complete.")] = "-",
    beam_size: Annotated[int | None, Opt(help="Hypotheses kept per sentence; 1 = greedy. [default: the model's, 5]", show_default=False, rich_help_panel="Search")] = None,
    batch_size: Annotated[int | None, Opt(help="Sentences translated together. [default: 64]", show_default=False, rich_help_panel="Search")] = None,
    length_penalty: Annotated[float | None, Opt(help="GNMT alpha for ranking; 0 = off. [default: 1.0]", show_default=False, rich_help_panel="Search")] = None,
    length_norm: Annotated[bool, Opt("--length-norm", help="Rank by score / length instead of the GNMT penalty.", rich_help_panel="Search")] = False,
    max_length_ratio: Annotated[float | None, Opt(help="Output stops by ratio x source length + constant. [default: 2.0]", show_default=False, rich_help_panel="Search")] = None,
    max_length_constant: Annotated[int | None, Opt(help="The constant of the length limit. [default: 10]", show_default=False, rich_help_panel="Search")] = None,
    min_length: Annotated[int | None, Opt(help="No EOS before this many pieces. [default: 0]", show_default=False, rich_help_panel="Search")] = None,
    nbest: Annotated[int, Opt(min=1, help="Print the N best as `id ||| hypothesis ||| score` (Moses format, 0-based id).", rich_help_panel="Output")] = 1,
    scores: Annotated[bool, Opt("--scores", help="Append a tab and the score to each translation.", rich_help_panel="Output")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="Print errors only.")] = False,
) -> None:
    """Translate lines from a file or stdin with a trained model."""
    with user_errors():
        from dataclasses import replace

        from seq2seq import checkpoint
        from seq2seq.config import Config
        from seq2seq.errors import ConfigError
        from seq2seq.textio import atomic_write, iter_lines, read_lines
        from seq2seq.translation import translate as run_translation

        loaded = checkpoint.load(model)
        chosen = {"beam_size": beam_size, "batch_size": batch_size, "length_penalty": length_penalty,
                  "max_length_ratio": max_length_ratio, "max_length_constant": max_length_constant, "min_length": min_length}
        search = replace(loaded.config.search, **{k: v for k, v in chosen.items() if v is not None})
        search = replace(search, length_norm=search.length_norm or length_norm)
        Config(search=search).validate()
        if nbest > search.beam_size:
            raise ConfigError(f"--nbest {nbest} needs a beam of at least {nbest} (got --beam-size {search.beam_size})")

        interactive = input_path == "-" and sys.stdin.isatty()
        if interactive and not quiet:
            say("reading lines from the terminal; each is translated when entered (Ctrl-D to finish)")
        # A file is read (and checked) whole before anything is written; stdin is streamed.
        lines = iter_lines("-") if input_path == "-" else read_lines(input_path)
        results = run_translation(loaded.model, loaded.tokenizers, lines, search, nbest=nbest,
                                  chunk_lines=1 if interactive else None)
        start = time.perf_counter()
        if output_path == "-":
            sys.stdout.reconfigure(encoding="utf-8", newline="\n")  # type: ignore[union-attr]
            count, pieces = _write(results, sys.stdout, nbest=nbest, scores=scores)
        else:
            with atomic_write(output_path) as file:
                count, pieces = _write(results, file, nbest=nbest, scores=scores)
        seconds = time.perf_counter() - start
        if not quiet and not interactive:
            say(f"translated {count:,} lines ({pieces:,} target pieces) in {seconds:.1f} s: "
                f"{count / max(seconds, 1e-9):,.1f} lines/s, beam {search.beam_size}")


def _write(results, out: IO[str], *, nbest: int, scores: bool) -> tuple[int, int]:
    """Write each input line's result as soon as it is ready; returns (lines, target pieces)."""
    count = pieces = 0
    for index, hypotheses in enumerate(results):
        if nbest > 1:
            out.writelines(f"{index} ||| {hyp.text} ||| {hyp.score:.4f}\n" for hyp in hypotheses)
        elif scores:
            out.write(f"{hypotheses[0].text}\t{hypotheses[0].score:.4f}\n")
        else:
            out.write(hypotheses[0].text + "\n")
        out.flush()
        count += 1
        pieces += len(hypotheses[0].tokens)
    return count, pieces


def register(app: typer.Typer) -> None:
    app.command(epilog=EPILOG)(translate)
