"""Corpus BLEU, chrF and TER through sacrebleu, with the sacrebleu command's defaults; WER, CER and exact
match (`seq2seq.errorrates`) through the same interface.

The one place that knows sacrebleu's reference layout: a list of reference *streams*, each
line-parallel to the hypotheses (stream k holds the k-th reference of every sentence).
Option names follow the sacrebleu command: `lowercase` and `tokenize` are BLEU's (-lc, -tok),
`chrf_word_order` is chrF's (-cw, 2 = chrF++); a metric ignores the others' options, so chrF and
TER keep their own case handling exactly as `sacrebleu -lc` does.

Three ways to score, as the sacrebleu command has them: one system (`corpus_scores`), several
systems side by side with an optional paired bootstrap test against the first (`compare_systems`),
and one system segment by segment (`sentence_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric, Score

from seq2seq.errorrates import ErrorRate, ExactMatch, normalized
from seq2seq.errors import ConfigError, DataError

if TYPE_CHECKING:
    from sacrebleu.significance import Result

METRICS = ("bleu", "chrf", "ter", "wer", "cer", "exact")  # also the order results come in, as in the sacrebleu command
LOWER_IS_BETTER = ("ter", "wer", "cer", "loss")  # the loss too, when training selects its best model by it
PER_REFERENCE_UNIT = ("wer", "cer")  # rates per reference word or character: a line needs a non-empty reference


class MetricResult(NamedTuple):
    name: str        # "bleu", "chrf" or "ter"
    score: Score     # sacrebleu's score; `score.score` is the number, `score.format(...)` its text
    signature: str   # e.g. "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"


class Cell(NamedTuple):
    """One system's corpus score for one metric; a paired bootstrap test fills in the other three."""

    score: float
    mean: float | None = None      # bootstrap estimate of the true score
    ci: float | None = None        # half-width of the 95% confidence interval around `mean`
    p_value: float | None = None   # against the baseline (the first system); None for the baseline itself


class Comparison(NamedTuple):
    systems: list[str]             # as given; the first is the baseline of a paired test
    metrics: list[str]             # sacrebleu's score names in METRICS order: "BLEU", "chrF2" (or "chrF2++"), "TER", "WER", "CER", "EXACT"
    cells: list[list[Cell]]        # cells[system][metric]
    signatures: dict[str, str]     # metric name -> signature; a paired test adds "bs:N|seed:S"
    paired_bs: int                 # resamples of the paired bootstrap test; 0 = no test


def make_metric(
    name: str, *, lowercase: bool = False, tokenize: str | None = None, chrf_word_order: int = 0,
    effective_order: bool = False,
) -> Metric:
    """Build one sacrebleu metric with the sacrebleu command's defaults, so scores are comparable.

    `effective_order` is BLEU's: the sacrebleu command turns it on for sentence-level scores only.
    """
    if name == "bleu":
        if tokenize is not None and tokenize not in BLEU.TOKENIZERS:
            raise ConfigError(f"unknown BLEU tokenizer {tokenize!r}; choose from {', '.join(BLEU.TOKENIZERS)}")
        try:
            return BLEU(lowercase=lowercase, tokenize=tokenize, effective_order=effective_order)
        except (RuntimeError, ImportError, OSError) as error:  # mecab not installed, spm model not downloadable
            reason = " ".join(str(error).split()) or type(error).__name__
            raise ConfigError(f"BLEU tokenizer {tokenize!r} cannot be used: {reason}") from None
    if name == "chrf":
        if chrf_word_order < 0:
            raise ConfigError(f"chrF word order must be 0 or more, got {chrf_word_order}")
        return CHRF(word_order=chrf_word_order)
    if name == "ter":
        return TER()
    if name in ("wer", "cer"):
        return ErrorRate("word" if name == "wer" else "char")
    if name == "exact":
        return ExactMatch()
    raise ConfigError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")


def check_parallel(hypotheses: tuple[str, Sequence[str]], references: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Refuse (name, lines) reference streams whose line count differs from the hypotheses'."""
    hyp_name, hyp_lines = hypotheses
    if not hyp_lines:
        raise DataError(f"{hyp_name}: no lines to score")
    if not references:
        raise DataError("no reference given: scoring needs at least one reference stream")
    for ref_name, ref_lines in references:
        if len(ref_lines) != len(hyp_lines):
            raise DataError(
                f"{hyp_name} has {len(hyp_lines)} lines but {ref_name} has {len(ref_lines)}; "
                "hypotheses and references must be line-parallel"
            )


def check_references(metrics: Sequence[str], references: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Refuse, for WER and CER, a line whose (name, lines) reference streams are all empty there: a rate per
    reference word has nothing to divide by."""
    if not set(metrics) & set(PER_REFERENCE_UNIT):
        return
    for number, refs in enumerate(zip(*(lines for _, lines in references)), start=1):
        if not any(normalized(ref) for ref in refs):
            where = " and ".join(f"{name}:{number}" for name, _ in references)
            raise DataError(f"{where}: empty reference line; WER and CER count edits per reference word or character, "
                            "so every line needs a non-empty reference")


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def corpus_scores(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], metrics: Sequence[str] = ("bleu",), **options
) -> list[MetricResult]:
    """Score a corpus with each requested metric (once each, in METRICS order, as the sacrebleu command does)."""
    names = _requested(metrics)
    check_parallel(("hypotheses", list(hypotheses)), _named(references))
    check_references(names, _named(references))
    results = []
    for name in names:
        metric = make_metric(name, **options)
        score = metric.corpus_score(list(hypotheses), [list(stream) for stream in references])
        results.append(MetricResult(name, score, metric.get_signature().format()))
    return results


def compare_systems(
    systems: Sequence[tuple[str, Sequence[str]]], references: Sequence[Sequence[str]],
    metrics: Sequence[str] = ("bleu",), *, paired_bs: int = 0, **options,
) -> Comparison:
    """Score several (name, lines) systems on the same references, as `sacrebleu REF -i SYS1 SYS2 ...` does.

    With `paired_bs` resamples, each system is also compared with the first by sacrebleu's paired
    bootstrap test (its fixed seed 12345, or $SACREBLEU_SEED), with one correction: a system whose
    output is identical to the baseline's gets p = 1.0. sacrebleu counts the resampled deltas that
    are strictly greater than the observed one; for identical output all are 0, so it reports
    p = 1/(n+1) and calls a system significantly different from itself.
    """
    names = _requested(metrics)
    refs = [list(stream) for stream in references]
    if not systems:
        raise DataError("no system to score")
    for name, lines in systems:
        check_parallel((name, list(lines)), _named(refs))
    check_references(names, _named(refs))
    built = {name: make_metric(name, **options) for name in names}
    if paired_bs:
        return _paired_bootstrap([(name, list(lines)) for name, lines in systems], refs, built, paired_bs)
    scores = [[metric.corpus_score(list(lines), refs) for metric in built.values()] for _, lines in systems]
    columns = [score.name for score in scores[0]]
    signatures = {column: metric.get_signature().format() for column, metric in zip(columns, built.values())}
    cells = [[Cell(score.score) for score in row] for row in scores]
    return Comparison([name for name, _ in systems], columns, cells, signatures, 0)


def _paired_bootstrap(
    systems: list[tuple[str, list[str]]], references: list[list[str]], built: dict[str, Metric], resamples: int
) -> Comparison:
    """sacrebleu's PairedTest (what `sacrebleu --paired-bs` runs), its results as Cells."""
    from sacrebleu.significance import PairedTest

    if len(systems) < 2:
        raise ConfigError("a paired test compares systems with the first one: it needs at least two systems")
    test = PairedTest(systems, {name.upper(): metric for name, metric in built.items()}, references,
                      test_type="bs", n_samples=resamples)
    signatures, results = test()
    columns = [key for key in results if key != "System"]
    baseline = systems[0][1]
    cells = []
    for index, (_, lines) in enumerate(systems):
        identical = index > 0 and lines == baseline
        cells.append([_cell(results[column][index], identical) for column in columns])
    return Comparison([name for name, _ in systems], columns, cells,
                      {column: signatures[column].format() for column in columns}, resamples)


def _cell(result: Result, identical: bool) -> Cell:
    """sacrebleu's Result in plain floats (it leaves numpy float32 in, which json cannot write); p = 1.0 for a copy."""
    p_value = 1.0 if identical else None if result.p_value is None else float(result.p_value)
    return Cell(float(result.score), float(result.mean), float(result.ci), p_value)


def sentence_scores(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], metric: str = "bleu", **options
) -> tuple[list[Score], str]:
    """Each segment scored on its own, and the signature, as `sacrebleu -sl` does.

    BLEU uses effective order there: a short segment with no 4-gram match does not score 0.
    """
    (name,) = _requested([metric])
    check_parallel(("hypotheses", list(hypotheses)), _named(references))
    check_references([name], _named(references))
    scorer = make_metric(name, effective_order=True, **options)
    scores = [scorer.sentence_score(hyp, list(refs)) for hyp, *refs in zip(hypotheses, *references)]
    return scores, scorer.get_signature().format()


def _requested(metrics: Sequence[str]) -> list[str]:
    """The metrics asked for, each once, in METRICS order; an unknown name is a usage error."""
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    return [name for name in METRICS if name in metrics]


def _named(references: Sequence[Sequence[str]]) -> list[tuple[str, list[str]]]:
    return [(f"reference {k}", list(stream)) for k, stream in enumerate(references, start=1)]


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """Corpus BLEU (13a, cased, one reference) and its signature: the training loop's validation score."""
    (result,) = corpus_scores(hypotheses, [references], ("bleu",))
    return result.score.score, result.signature
