"""`seq2seq score`: corpus BLEU / chrF / TER as the `sacrebleu` command computes them, and WER / CER / exact match,
for one system or several."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperCommand

from cli.console import help_epilog, say, user_errors

if TYPE_CHECKING:
    from seq2seq import Cell, Comparison

FORMATS = ("json", "text")
INPUT_FLAGS = ("-i", "--input")
SIGNIFICANT = 0.05  # sacrebleu stars a p-value at or below this

EPILOG = help_epilog("""\
\b
Examples:
  seq2seq score ref.en -i hyp.en
  seq2seq score ref.en -i hyp.en -m bleu -m chrf -f text -w 2
  seq2seq score ref1.en ref2.en.gz -i hyp.en -m bleu,chrf,ter
  seq2seq translate ... | seq2seq score ref.en -b
  seq2seq score ref.en -i base.en new.en newer.en -m bleu,chrf --paired-bs
  seq2seq score ref.en -i hyp.en --sentence-level -b
  seq2seq score test.phones -i hyp.phones -m wer,cer,exact    # character-level tasks

References come first, then -i with one file per system, as with sacrebleu. The numbers are
sacrebleu's for the same options (lines are read as sacrebleu reads them: trailing whitespace is
dropped). One system: sacrebleu's output, byte for byte. Several: a table (rich on a terminal;
piped, JSON, or plain text with -f text) and each metric's signature once. --paired-bs compares
every system with the first, the baseline: * marks p <= 0.05, a difference unlikely to be chance.

WER: word edit distance summed over lines, over the reference words (words split at whitespace);
CER: the same over characters, where runs of whitespace count as one space and the spaces between
words count; exact: the share of lines equal to a reference. All three are percentages, case
sensitive, and with several references take each line's nearest one.""")


class ScoreCommand(TyperCommand):
    """Lets `-i` take one file per system as sacrebleu's does: `-i a b` is read as `-i a -i b`.

    Click options take a fixed number of values, so the extra files are given their own `-i`
    before Click parses. As with sacrebleu, every word after -i up to the next option is a system.
    """

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_inputs(args))


def spread_inputs(args: list[str]) -> list[str]:
    """`ref -i a b -m bleu` -> `ref -i a -i b -m bleu`; '-' (stdin) counts as a file, `--` ends options."""
    spread: list[str] = []
    value_next = after_input = False
    for index, arg in enumerate(args):
        if value_next:  # Click gives -i the next word, whatever it looks like
            spread.append(arg)
            value_next, after_input = False, True
        elif arg == "--":
            return [*spread, *args[index:]]
        elif after_input and (arg == "-" or not arg.startswith("-")):
            spread += [INPUT_FLAGS[0], arg]
        else:
            spread.append(arg)
            value_next, after_input = arg in INPUT_FLAGS, False
    return spread


Opt = typer.Option


def score(
    references: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="REF", help="Reference file(s), plain or gzipped; several = multi-reference.", show_default=False
        ),
    ] = None,
    hypotheses: Annotated[
        list[str] | None,
        Opt("--input", "-i", metavar="FILE...", show_default=False,
            help="Hypotheses, one file per system, after the references: -i a.txt b.txt (or -i a.txt -i b.txt). "
                 "'-' or no -i: stdin."),
    ] = None,
    metrics: Annotated[
        list[str],
        Opt("--metrics", "-m", metavar="NAMES",
            help="bleu, chrf, ter, wer, cer and/or exact: repeat (-m bleu -m chrf) or separate with commas (-m bleu,chrf)."),
    ] = ["bleu"],  # noqa: B006 (Typer reads the default; it is never mutated)
    score_only: Annotated[bool, Opt("--score-only", "-b", help="Print only the number(s) (one system).")] = False,
    width: Annotated[int, Opt("--width", "-w", min=0, help="Decimals in the printed scores.")] = 1,
    output_format: Annotated[
        str | None,
        Opt("--format", "-f", metavar="json|text", show_default=False,
            help="Output format (default: $SACREBLEU_FORMAT if set; else json for one system, as sacrebleu, "
                 "and for several a table on a terminal, json when piped)."),
    ] = None,
    lowercase: Annotated[bool, Opt("--lowercase", "-lc", help="Case-insensitive BLEU (BLEU only, as sacrebleu).")] = False,
    tokenize: Annotated[
        str | None,
        Opt("--tokenize", "-tok", metavar="NAME", show_default=False, help="BLEU tokenizer: 13a (default), intl, zh, char, none, ..."),
    ] = None,
    chrf_word_order: Annotated[int, Opt("--chrf-word-order", "-cw", min=0, help="chrF word n-gram order; 2 = chrF++.")] = 0,
    paired_bs: Annotated[
        bool, Opt("--paired-bs", "-pbs", rich_help_panel="Several systems",
                  help="Paired bootstrap resampling test of each system against the first (sacrebleu's; seed 12345 "
                       "or $SACREBLEU_SEED).")
    ] = False,
    paired_bs_n: Annotated[
        int, Opt("--paired-bs-n", "-pbsn", min=1, rich_help_panel="Several systems", help="Bootstrap resamples.")
    ] = 1000,
    sentence_level: Annotated[
        bool, Opt("--sentence-level", "--sentence", "-sl",
                  help="One score per segment, as sacrebleu -sl (one system, one metric; BLEU with effective order).")
    ] = False,
) -> None:
    """Score hypotheses against references with BLEU, chrF, TER, WER, CER and/or exact match: one system, or several side by side."""
    with user_errors():
        from seq2seq import ConfigError, check_references

        names = _metric_names(metrics)
        files = hypotheses or ["-"]
        fmt = _output_format(output_format)
        if fmt not in (None, *FORMATS):
            raise ConfigError(f"--format must be json or text, got {output_format!r}")
        _check_usage(len(files), names, score_only=score_only, paired=paired_bs, sentence_level=sentence_level)
        systems, ref_streams = _read(files, references or [], paired=paired_bs)
        check_references(names, ref_streams)
        refs = [lines for _, lines in ref_streams]
        options = {"lowercase": lowercase, "tokenize": tokenize, "chrf_word_order": chrf_word_order}
        if sentence_level:
            _print_sentences(systems[0][1], refs, names[0], options, width=width, score_only=score_only)
        elif len(systems) == 1 and not paired_bs:
            _print_single(systems[0][1], refs, names, options, width=width, score_only=score_only, fmt=fmt or "json")
        else:
            from seq2seq import compare_systems

            comparison = compare_systems(systems, refs, names, paired_bs=paired_bs_n if paired_bs else 0, **options)
            _print_table(comparison, width=width, fmt=fmt)


def _check_usage(systems: int, names: list[str], *, score_only: bool, paired: bool, sentence_level: bool) -> None:
    """Refuse combinations that have no meaning, instead of ignoring an option silently."""
    from seq2seq import ConfigError

    if not names:
        raise ConfigError("-m gave no metric name; choose from bleu, chrf, ter, wer, cer and exact")
    if sentence_level and (systems > 1 or len(set(names)) > 1 or paired):
        raise ConfigError("--sentence-level scores one system with one metric, without a paired test (as sacrebleu -sl)")
    if score_only and systems > 1:
        raise ConfigError("--score-only prints one system's numbers; for several systems use -f json")
    if paired and systems < 2:
        raise ConfigError("--paired-bs compares systems with the first one: give -i at least two files")


def _print_single(hyp_lines: list[str], refs: list[list[str]], names: list[str], options: dict, *,
                  width: int, score_only: bool, fmt: str) -> None:
    """sacrebleu's single-system output, byte for byte."""
    from seq2seq import corpus_scores

    results = corpus_scores(hyp_lines, refs, names, **options)
    is_json = fmt == "json"
    typer.echo(_layout([r.score.format(width, score_only, r.signature, is_json) for r in results], is_json))


def _print_sentences(hyp_lines: list[str], refs: list[list[str]], name: str, options: dict, *,
                     width: int, score_only: bool) -> None:
    """One line per segment, as `sacrebleu -sl` prints them (its text form whatever -f says)."""
    from seq2seq import sentence_scores

    scores, signature = sentence_scores(hyp_lines, refs, name, **options)
    typer.echo("\n".join(s.format(width, score_only, signature) for s in scores))


def _metric_names(values: list[str]) -> list[str]:
    """Flatten `-m bleu -m chrf`, `-m bleu,chrf` and `-m "bleu chrf"` into one list of names."""
    return [name.lower() for value in values for name in re.split(r"[,\s]+", value.strip()) if name]


def _output_format(value: str | None) -> str | None:
    """-f wins; otherwise $SACREBLEU_FORMAT when it names a format (sacrebleu honours it too); else None (the default)."""
    if value is not None:
        return value.lower()
    from_env = os.environ.get("SACREBLEU_FORMAT", "").lower()
    return from_env if from_env in FORMATS else None


def _read(
    hypotheses: list[str], references: list[str], *, paired: bool
) -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]]]:
    """Read each system and the references the way sacrebleu does (rstripped lines); check they are parallel."""
    from seq2seq import METRICS, ConfigError, DataError, check_parallel, display_name, read_lines

    if not references:
        raise ConfigError("no reference file: put the reference file(s) before -i, e.g. seq2seq score ref.txt -i hyp.txt")
    for ref in references:
        if ref in METRICS and not Path(ref).exists():
            raise DataError(f"{ref}: no such file (to ask for several metrics write -m bleu -m {ref} or -m bleu,{ref})")
    streams = [(display_name(ref), [line.rstrip() for line in read_lines(ref)]) for ref in references]
    systems = []
    for path in _distinct(hypotheses, paired=paired):
        if path == "-" and sys.stdin.isatty():
            say("reading hypotheses from stdin (end with Ctrl-D; or give a file with -i)")
        lines = [line.rstrip() for line in read_lines(path)]
        check_parallel((display_name(path), lines), streams)
        systems.append((display_name(path), lines))
    return systems, streams


def _distinct(paths: list[str], *, paired: bool) -> list[str]:
    """Refuse a file given twice, except the baseline again in a paired test (`-i base.txt *.txt`), as sacrebleu."""
    from seq2seq import ConfigError

    kept: list[str] = []
    for path in paths:
        if path not in kept:
            kept.append(path)
        elif paired and path == kept[0]:
            say(f"ignoring {path} after the first -i file: it is the baseline")
        else:
            raise ConfigError(f"{path} is given twice to -i; each system needs a file of its own")
    return kept


def _print_table(comparison: Comparison, *, width: int, fmt: str | None) -> None:
    """Several systems: -f json or a pipe -> JSON; -f text -> plain text; a terminal -> a rich table."""
    terminal = _stdout_is_terminal()
    if fmt == "json" or (fmt is None and not terminal):
        typer.echo(_json_table(comparison, width))
    elif terminal:
        _rich_table(comparison, width)
    else:
        typer.echo(_plain_table(comparison, width))


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _system_names(comparison: Comparison) -> list[str]:
    """sacrebleu's names: the first system is "Baseline: NAME" in a paired test."""
    names = list(comparison.systems)
    if comparison.paired_bs:
        names[0] = f"Baseline: {names[0]}"
    return names


def _headers(comparison: Comparison) -> list[str]:
    suffix = " (μ ± 95% CI)" if comparison.paired_bs else ""
    return ["System", *(name + suffix for name in comparison.metrics)]


def _cell_text(cell: Cell, width: int) -> tuple[str, str]:
    """A cell as sacrebleu's table writes it: "score (mean ± ci)", and "(p = P)" starred when significant."""
    text = f"{cell.score:.{width}f}"
    if cell.mean is not None:
        text += f" ({cell.mean:.{width}f} ± {cell.ci:.{width}f})"
    if cell.p_value is None:
        return text, ""
    return text, f"(p = {cell.p_value:.4f})" + ("*" if cell.p_value <= SIGNIFICANT else "")


def _json_table(comparison: Comparison, width: int) -> str:
    """sacrebleu's multi-system JSON rows (scores as text at --width, or a paired test's numbers), with the signatures."""
    rows = []
    for name, cells in zip(_system_names(comparison), comparison.cells):
        row: dict = {"system": name}
        for metric, cell in zip(comparison.metrics, cells):
            row[metric] = (
                {"score": cell.score, "p_value": cell.p_value, "mean": cell.mean, "ci": cell.ci}
                if comparison.paired_bs else f"{cell.score:.{width}f}"
            )
        rows.append(row)
    return json.dumps({"systems": rows, "signatures": comparison.signatures}, indent=4)


def _plain_table(comparison: Comparison, width: int) -> str:
    """Columns aligned with spaces, one line per system, then the notes: for pipes and files."""
    body = [[name, *(" ".join(filter(None, _cell_text(cell, width))) for cell in cells)]
            for name, cells in zip(_system_names(comparison), comparison.cells)]
    table = [_headers(comparison), *body]
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]))]
    lines = ["  ".join(text.ljust(size) for text, size in zip(row, widths)).rstrip() for row in table]
    return "\n".join([*lines, "", *_notes(comparison)])


def _rich_table(comparison: Comparison, width: int) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*_headers(comparison))
    for index, (name, cells) in enumerate(zip(_system_names(comparison), comparison.cells)):
        texts = []
        for cell in cells:
            score, p_value = _cell_text(cell, width)
            texts.append(Text.assemble(score, ("\n" + p_value, "bold" if p_value.endswith("*") else "dim") if p_value else ""))
        table.add_row(Text(name, style="yellow" if index == 0 and comparison.paired_bs else ""), *texts)
    console = Console(highlight=False, soft_wrap=True)  # signatures stay whole lines, for copying
    console.print(table)
    for line in _notes(comparison):
        console.print(Text(line))


def _notes(comparison: Comparison) -> list[str]:
    """What the test did, and each metric's signature once (what sacrebleu prints under its table)."""
    lines = []
    if comparison.paired_bs:
        lines += [
            f"Paired bootstrap resampling test with {comparison.paired_bs} resamples, each system against the baseline.",
            "* marks p <= 0.05: the difference is unlikely to be chance (it does not say which system is better).",
            "",
        ]
    return [*lines, "Metric signatures:", *(f" - {name:<10} {signature}" for name, signature in comparison.signatures.items())]


def _layout(lines: list[str], is_json: bool) -> str:
    """Join formatted scores as sacrebleu's print_single_results does: a JSON list, or text aligned on '='."""
    if is_json:
        return "[\n" + ",\n".join(lines) + "\n]" if len(lines) > 1 else lines[0]
    if len(lines) == 1 or "=" not in lines[0]:
        return "\n".join(lines)
    width = max(line.index("=") - 1 for line in lines)
    return "\n".join(f"{line[: line.index('=') - 1]:>{width}}{line[line.index('=') - 1 :]}" for line in lines)


def register(app: typer.Typer) -> None:
    app.command("score", cls=ScoreCommand, epilog=EPILOG, no_args_is_help=True)(score)
