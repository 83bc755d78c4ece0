"""`seq2seq translate`: a filter from source lines to target lines, one output line (or n-best block) per input line."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer

from cli.console import help_epilog, say, user_errors

if TYPE_CHECKING:
    from seq2seq import Perplexity, SearchConfig, Shard, TargetScore, Translation, Translator
    from cli.progress import LineProgress

EPILOG = help_epilog("""\
\b
Examples:
  seq2seq translate -m runs/de-en/best.pt -i test.de -o test.en
  cat test.de | seq2seq translate -m runs/de-en/best.pt > test.en
  seq2seq translate -m runs/de-en/best.pt --beam-size 1 < test.de      # greedy
  seq2seq translate -m runs/de-en/best.pt --nbest 5 < test.de          # id ||| hypothesis ||| score
  seq2seq translate -m runs/de-en/best.pt --alignment < test.de        # hypothesis ||| 0-0 1-2 2-1
  seq2seq translate -m runs/de-en/best.pt -i test.de --attention-plot attention/   # line-000001.png, ...
  seq2seq translate -m a/best.pt -m b/best.pt --weights 0.6,0.4 < test.de   # an ensemble
  seq2seq translate -m runs/de-en/best.pt -i test.de --score-target test.en   # log-probability of each line
  seq2seq translate -m runs/de-en/best.pt --sample --nbest 5 --top-p 0.9 --seed 1 < test.de
  seq2seq translate -m runs/de-en/best.pt -i test.de --prefix starts.en  # outputs begin with these lines
  seq2seq translate -m runs/lm/best.pt --score-target valid.en    # a language model: log-probabilities, perplexity
  seq2seq translate -m runs/lm/best.pt --sample --seed 1 -i prompts.en   # a sample continuing each line

Scores are the model's log-probability of the output pieces plus EOS (natural log), before any
length penalty. Alignments pair 0-based source-target SentencePiece piece indices (fast_align /
Moses `i-j`), each output piece with the source piece it attended to most. Typed at a terminal,
each line is answered as soon as it is entered. Reading a file or a pipe, progress shows on stderr
(a bar on a terminal, a line every 30 s otherwise); -q hides it.""")

Opt = typer.Option
# Four times the default training limit (data.max_length): far above real sentences, far below what
# stalls decoding (its length, and what each step attends to, grow with the source).
MAX_SOURCE_PIECES = 400


def translate(
    model: Annotated[list[Path], Opt("--model", "-m", help="Checkpoint (.pt) written by `seq2seq train`. Repeat it to translate with an ensemble: the models' probabilities averaged at each step (they must share tokenizers).", show_default=False)],
    input_path: Annotated[str, Opt("--input", "-i", metavar="FILE", help="Source lines; '-' is stdin.")] = "-",
    output_path: Annotated[str, Opt("--output", "-o", metavar="FILE", help="Where translations go; '-' is stdout. A file appears only when complete.")] = "-",
    beam_size: Annotated[int | None, Opt(help="Hypotheses kept per sentence; 1 = greedy. [default: the model's, 5]", show_default=False, rich_help_panel="Search")] = None,
    batch_size: Annotated[int | None, Opt(help="Sentences translated together. [default: 64]", show_default=False, rich_help_panel="Search")] = None,
    length_penalty: Annotated[float | None, Opt(help="GNMT alpha for ranking; 0 = off. [default: 1.0]", show_default=False, rich_help_panel="Search")] = None,
    length_norm: Annotated[bool, Opt("--length-norm", help="Rank by score / length instead of the GNMT penalty.", rich_help_panel="Search")] = False,
    max_length_ratio: Annotated[float | None, Opt(help="Output stops by ratio x source length + constant. [default: 2.0]", show_default=False, rich_help_panel="Search")] = None,
    max_length_constant: Annotated[int | None, Opt(help="The constant of the length limit. [default: 10]", show_default=False, rich_help_panel="Search")] = None,
    min_length: Annotated[int | None, Opt(help="No EOS before this many pieces. [default: 0]", show_default=False, rich_help_panel="Search")] = None,
    precision: Annotated[str | None, Opt(help="fp32, or bf16 for speed on CPUs with bf16 units. [default: fp32]", show_default=False, rich_help_panel="Search")] = None,
    quantize: Annotated[str | None, Opt(help="int8: int8 weights for the decoder's linear layers (faster on CPU), or none. [default: none]", show_default=False, rich_help_panel="Search")] = None,
    device: Annotated[str, Opt(help="auto, cpu or cuda (auto: the GPU when CUDA is available; int8 runs on the CPU).", rich_help_panel="Search")] = "auto",
    workers: Annotated[int, Opt(min=0, help="Processes translating batches side by side on the CPU, its cores shared among them; 0 = one per core (up to 8) on Linux, else 1. A GPU translates in one.", rich_help_panel="Search")] = 0,
    threads: Annotated[int, Opt(min=0, help="CPU threads for each process that translates; 0 = the cores shared among the --workers (with --workers 1: torch's count, fewer while other programs take cores).", rich_help_panel="Search")] = 0,
    nbest: Annotated[int, Opt(min=1, help="Print the N best (with --sample: N samples) as `id ||| hypothesis ||| score` (Moses format, 0-based id).", rich_help_panel="Output")] = 1,
    scores: Annotated[bool, Opt("--scores", help="Append a tab and the score to each translation.", rich_help_panel="Output")] = False,
    alignment: Annotated[bool, Opt("--alignment", help="Follow each translation with ` ||| ` and its hard alignment: 0-based `source-target` piece index pairs (Marian style).", rich_help_panel="Output")] = False,
    attention_plot: Annotated[Path | None, Opt("--attention-plot", metavar="DIR", help="Draw the attention of each line's best translation into DIR/line-NNNNNN.png (1-based line numbers; needs matplotlib).", show_default=False, rich_help_panel="Output")] = None,
    replace_unk: Annotated[bool, Opt("--replace-unk", help="Replace each <unk> of the output (printed as a double question mark) with the original text of the source piece it attended to most: for models whose tokenizer has no byte fallback (older ones, char/word, vocabularies under 1,024). Costs one more decoder pass per output.", rich_help_panel="Output")] = False,
    weights: Annotated[str | None, Opt(metavar="W1,W2,...", help="An ensemble's weights, one per --model, e.g. 0.6,0.4 (scaled to sum to 1). [default: equal]", show_default=False, rich_help_panel="Search")] = None,
    no_repeat_ngram: Annotated[int | None, Opt(metavar="N", help="No n-gram of N pieces appears twice in an output; 0 = off. [default: 0]", show_default=False, rich_help_panel="Search")] = None,
    coverage_penalty: Annotated[float | None, Opt(metavar="BETA", help="GNMT's coverage penalty: the beam's outputs re-ranked by how fully they attended to every source piece (0.2-0.4 is usual); 0 = off. [default: 0.0]", show_default=False, rich_help_panel="Search")] = None,
    prefix: Annotated[str | None, Opt("--prefix", metavar="FILE", help="One line per input line: each output begins with its line (as target pieces) and the model completes it; an empty line forces nothing. The score covers the whole output.", show_default=False, rich_help_panel="Search")] = None,
    sample: Annotated[bool, Opt("--sample", help="Draw each output from the model's distribution instead of searching for the best; --nbest N draws N per line.", rich_help_panel="Sampling")] = False,
    temperature: Annotated[float | None, Opt(help="Divides the log-probabilities before drawing: below 1 closer to greedy, above 1 more varied. [default: 1.0]", show_default=False, rich_help_panel="Sampling")] = None,
    top_k: Annotated[int | None, Opt(help="Draw only from the K most probable pieces; 0 = all. [default: 0]", show_default=False, rich_help_panel="Sampling")] = None,
    top_p: Annotated[float | None, Opt(help="Draw only from the most probable pieces that together hold P of the probability (nucleus); 1 = all. [default: 1.0]", show_default=False, rich_help_panel="Sampling")] = None,
    seed: Annotated[int | None, Opt(help="The same seed draws the same samples, however the lines are batched. [default: 0]", show_default=False, rich_help_panel="Sampling")] = None,
    score_target: Annotated[str | None, Opt("--score-target", metavar="FILE", help="Print the model's log-probability of each line of FILE as the translation of the input's same line, instead of translating (for reranking and filtering).", show_default=False, rich_help_panel="Scoring")] = None,
    per_token: Annotated[bool, Opt("--per-token", help="With --score-target: follow each score with ` ||| ` and the log-probability of each target piece, then of EOS.", rich_help_panel="Scoring")] = False,
    max_source_pieces: Annotated[int, Opt(min=0, help="Translate only the first N pieces of a longer line, with a warning (0 = no limit).", rich_help_panel="Search")] = MAX_SOURCE_PIECES,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="Print errors only.")] = False,
) -> None:
    """Translate lines from a file or stdin with a trained model."""
    with user_errors(), _shard(input_path, output_path, device, score_target=score_target, sample=sample) as shard:
        import seq2seq

        from cli.progress import LineProgress

        seq2seq.reuse_freed_memory()
        _check_scoring_options(score_target, per_token, nbest=nbest, sample=sample, prefix=prefix, alignment=alignment,
                               attention_plot=attention_plot, replace_unk=replace_unk)
        translator = seq2seq.load(
            model, weights=_weights(weights), device=shard.device(device), beam_size=beam_size, batch_size=batch_size,
            length_penalty=length_penalty, length_norm=length_norm or None, max_length_ratio=max_length_ratio,
            max_length_constant=max_length_constant, min_length=min_length, precision=precision, quantize=quantize,
            no_repeat_ngram=no_repeat_ngram, coverage_penalty=coverage_penalty, sample=sample or None,
            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        input_path = _lines_read(translator, input_path, score_target)
        interactive = input_path == "-" and sys.stdin.isatty()
        verbs = _verbs(translator, greet=interactive and not quiet)
        warn = (lambda message: None) if quiet else (lambda message: say(f"warning: {message}"))
        lines, total = seq2seq.source_lines(input_path, on_invalid=warn)
        lines, share, first = shard.take(lines, total)
        name = seq2seq.display_name(input_path)
        # Translations scrolling on the terminal are their own progress; typed input has no "how far".
        progress = LineProgress(share, enabled=not (quiet or interactive or (output_path == "-" and sys.stdout.isatty())),
                                verbs=verbs)
        perplexity = seq2seq.Perplexity()
        if score_target is not None:
            results = _scores(translator, lines, score_target, name, perplexity, interactive=interactive)
            render = partial(_render_score, per_token=per_token)
        else:
            results = translator.stream(
                lines, nbest=nbest, chunk_lines=1 if interactive else None, attention=alignment or attention_plot is not None,
                max_source_pieces=max_source_pieces, workers=workers, replace_unk=replace_unk,
                prefixes=_prefixes(prefix, shard, total, name), on_step=progress.step,
                threads=threads, **_warnings(name, max_source_pieces, warn, first=first))
            render = partial(_render, nbest=nbest, scores=scores, alignment=alignment)
        after = _then_advance(_attention_drawer(attention_plot, translator, name), progress)
        start = time.perf_counter()
        with progress, _opened(output_path, shard) as out:
            count, pieces = _write(results, out, after=after, render=render, first=first)
        count, pieces = shard.sum(count, pieces)
        if not quiet and not interactive:
            _summary(count, pieces, time.perf_counter() - start, translator.search, perplexity=None if score_target is None else perplexity,
                     verb=verbs[1])


def _verbs(translator: Translator, *, greet: bool) -> tuple[str, str]:
    """What is done to each line, as the progress and the summary say it; with `greet`, the terminal is told."""
    verbs = ("continuing", "continued") if translator.language_model else ("translating", "translated")
    if greet:
        say(f"reading lines from the terminal; each is {verbs[1]} when entered (Ctrl-D to finish)")
    return verbs


def _warnings(name: str, max_source_pieces: int, warn: Callable[[str], None], *, first: int) -> dict[str, Callable]:
    """What the user is told of a line cut to --max-source-pieces, of a line long enough to search for a while
    (the translator numbers the lines it is given: `first` lines of the input come before them), and of
    fewer threads while other programs take cores."""
    return dict(
        on_threads=lambda change: warn(f"other programs are using {change.others:.1f} of {change.cores} cores: "
                                       f"translating on {change.threads} CPU thread{'s' if change.threads > 1 else ''} "
                                       f"(was {change.was}; --threads N pins the count)"),
        on_cut=lambda number, pieces: warn(f"{name}:{first + number}: {pieces:,} pieces long; only the first "
                                           f"{max_source_pieces:,} are translated (--max-source-pieces)"),
        on_long_line=lambda line: warn(f"{name}:{first + line.number}: {line.pieces:,} pieces: its search may take up "
                                       f"to {line.steps:,} steps and about {line.memory / 2**30:.1f} GiB of memory"))


@contextmanager
def _shard(input_path: str, output_path: str, device: str, **unsplittable: object) -> Iterator[Shard]:
    """This process's share of the input: all of it, or under torchrun one block of lines (`seq2seq.sharding`).
    `unsplittable`: the options refused there, by name (--sample draws by line number, --score-target sums a
    perplexity)."""
    from seq2seq import translation_shard

    given = {"--" + name.replace("_", "-"): value is not None and value is not False for name, value in unsplittable.items()}
    with translation_shard(input_path, output_path, device, unsplittable=given) as shard:
        yield shard


def _prefixes(prefix: str | None, shard: Shard, total: int | None, input_name: str) -> Iterable[str] | None:
    """The --prefix lines of this process's input lines: streamed, or this rank's block of them."""
    from seq2seq import iter_lines

    if prefix is None:
        return None
    if not shard.is_split or total is None:
        return iter_lines(prefix)
    return shard.paired(prefix, total, input_name)


def _then_advance(draw: Callable[[int, list[Translation]], None], progress: LineProgress) -> Callable[[int, list[Translation]], None]:
    """What follows each written line: its attention picture, if any, then a step of the progress."""
    def after(index: int, hypotheses: list[Translation]) -> None:
        draw(index, hypotheses)
        progress.advance()

    return after


def _lines_read(translator: Translator, input_path: str, score_target: str | None) -> str:
    """What the command reads line by line: the input, or a language model's --score-target (it has no source)."""
    from seq2seq import ConfigError

    if not (translator.language_model and score_target is not None):
        return input_path
    if input_path != "-":
        raise ConfigError("a language model reads no source: --score-target FILE alone scores FILE's lines (drop --input)")
    return score_target


def _scores(translator: Translator, lines: Iterator[str], score_target: str, name: str, perplexity: Perplexity, *,
            interactive: bool) -> Iterator[list[TargetScore]]:
    """The score of each line of --score-target (`lines` themselves for a language model, else given the input's
    same line), each added to `perplexity` as it passes."""
    from seq2seq import display_name, iter_lines

    sources, targets = (None, lines) if translator.language_model else (lines, iter_lines(score_target))
    for scored in translator.score_stream(sources, targets, chunk_lines=1 if interactive else None,
                                          names=(name, display_name(score_target))):
        perplexity.add(scored)
        yield [scored]


def _summary(count: int, pieces: int, seconds: float, search: SearchConfig, *, perplexity: Perplexity | None,
             verb: str) -> None:
    """The closing line: how many lines, how fast, and how the outputs were made (or the scored text's perplexity).
    `verb`: what was done to each input line (translated, or continued by a language model)."""
    scoring = perplexity is not None
    how = "" if scoring else f", sampling at temperature {search.temperature}" if search.sample else f", beam {search.beam_size}"
    say(f"{'scored' if scoring else verb} {count:,} lines ({pieces:,} target pieces) in {seconds:.1f} s: "
        f"{count / max(seconds, 1e-9):,.1f} lines/s{how}")
    if perplexity is not None and perplexity.pieces:
        say(f"perplexity {perplexity.per_piece:.3f} per piece ({perplexity.pieces:,} pieces, EOS included), "
            f"{perplexity.per_character:.4f} per character ({perplexity.characters:,}, line ends included)")


def _weights(text: str | None) -> list[float] | None:
    """--weights 0.6,0.4 as numbers; the library checks their count and sign."""
    from seq2seq import ConfigError

    if text is None:
        return None
    try:
        return [float(weight) for weight in text.split(",")]
    except ValueError:
        raise ConfigError(f"--weights must be numbers separated by commas, e.g. 0.6,0.4; got {text!r}") from None


def _check_scoring_options(score_target: str | None, per_token: bool, *, nbest: int, **output: object) -> None:
    """--score-target prints scores of given outputs: the options that shape or draw new outputs do not apply."""
    from seq2seq import ConfigError

    if per_token and score_target is None:
        raise ConfigError("--per-token goes with --score-target FILE")
    if score_target is None:
        return
    clashing = [name for name, value in output.items() if value is not None and value is not False]
    if nbest > 1 or clashing:
        flag = "--" + ("nbest" if nbest > 1 else clashing[0]).replace("_", "-")
        raise ConfigError(f"{flag} shapes new translations; --score-target scores the given ones: use one or the other")


@contextmanager
def _opened(output_path: str, shard: Shard) -> Iterator[IO[str]]:
    """stdout as UTF-8 with LF line ends, or a file that appears under its name only when complete (under torchrun:
    once every process has translated its block, written by the first)."""
    from seq2seq import atomic_write

    if shard.is_split:
        with shard.output(output_path) as block:
            yield block
    elif output_path == "-":
        sys.stdout.reconfigure(encoding="utf-8", newline="\n")  # type: ignore[union-attr]
        yield sys.stdout
    else:
        with atomic_write(output_path) as file:
            yield file


def _render(index: int, hypotheses: list[Translation], *, nbest: int, scores: bool, alignment: bool) -> str:
    """One input line's output: its n-best block (Moses `id ||| hypothesis ||| score`), or the best translation.

    With `alignment`, ` ||| i-j ...` follows each hypothesis's text, as Marian prints it (the separator is
    there even when no piece is aligned, so every line splits the same way); `--scores` still ends the line.
    """
    def text(hyp: Translation) -> str:
        return hyp.text + _alignment(hyp) if alignment else hyp.text

    if nbest > 1:
        return "".join(f"{index} ||| {text(hyp)} ||| {hyp.score:.4f}\n" for hyp in hypotheses)
    best = hypotheses[0]
    return f"{text(best)}\t{best.score:.4f}\n" if scores else f"{text(best)}\n"


def _render_score(index: int, scored: list[TargetScore], *, per_token: bool) -> str:
    """A target's score; with `per_token`, ` ||| ` and each piece's log-probability, EOS's last."""
    (target,) = scored
    if per_token:
        return f"{target.score:.4f} ||| " + " ".join(f"{value:.4f}" for value in target.token_scores) + "\n"
    return f"{target.score:.4f}\n"


def _alignment(hyp: Translation) -> str:
    return " ||| " + " ".join(f"{source}-{target}" for source, target in hyp.alignment)


def _attention_drawer(folder: Path | None, translator: Translator, input_name: str) -> Callable[[int, list[Translation]], None]:
    """What to do once line `index` (0-based) is written: draw its best translation's attention, or nothing.

    The folder and matplotlib are checked here, before any line is translated.
    """
    if folder is None:
        return lambda index, hypotheses: None
    from seq2seq import plot_attention, prepare_picture_folder

    prepare_picture_folder(folder)
    tokenizers = translator.tokenizers

    def draw(index: int, hypotheses: list[Translation]) -> None:
        best = hypotheses[0]
        if best.attention is None:  # an empty line: nothing was read, nothing to draw
            return
        source = [*tokenizers.src.pieces(best.attention.src_tokens), "</s>"]
        target = [*tokenizers.tgt.pieces(best.tokens), "</s>"]
        plot_attention(best.attention.weights.tolist(), source, target, folder / f"line-{index + 1:06d}.png",
                       title=f"{input_name}:{index + 1}")

    return draw


def _write(results: Iterator[list[Translation]], out: IO[str], *, render: Callable[[int, list[Translation]], str],
           after: Callable[[int, list[Translation]], None], first: int = 0) -> tuple[int, int]:
    """Write each input line's result as soon as it is ready, then call `after`; returns (lines, target pieces).
    Results are numbered (0-based) from `first`: where this process's lines start in the input.

    Streamed input can fail part-way (a NUL byte at line 5,000 of stdin): the error then says how many
    lines were already translated, so that a partial output is never taken for a whole one.
    """
    from seq2seq import Seq2SeqError

    count = pieces = 0
    try:
        for index, hypotheses in enumerate(results, start=first):
            out.write(render(index, hypotheses))
            out.flush()
            after(index, hypotheses)
            count += 1
            pieces += len(hypotheses[0].tokens)
    except Seq2SeqError as error:
        if count:
            error.args = (f"{error} (after {count:,} translated lines)",)
        raise
    return count, pieces


def register(app: typer.Typer) -> None:
    app.command(epilog=EPILOG)(translate)
