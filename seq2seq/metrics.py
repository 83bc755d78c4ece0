"""Corpus BLEU, chrF and TER through sacrebleu, with the sacrebleu command's defaults.

The one place that knows sacrebleu's reference layout: a list of reference *streams*, each
line-parallel to the hypotheses (stream k holds the k-th reference of every sentence).
Option names follow the sacrebleu command: `lowercase` and `tokenize` are BLEU's (-lc, -tok),
`chrf_word_order` is chrF's (-cw, 2 = chrF++); a metric ignores the others' options, so chrF and
TER keep their own case handling exactly as `sacrebleu -lc` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric, Score

from seq2seq.errors import ConfigError, DataError

METRICS = ("bleu", "chrf", "ter")  # also the order results come in, as in the sacrebleu command


class MetricResult(NamedTuple):
    name: str        # "bleu", "chrf" or "ter"
    score: Score     # sacrebleu's score; `score.score` is the number, `score.format(...)` its text
    signature: str   # e.g. "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"


def make_metric(name: str, *, lowercase: bool = False, tokenize: str | None = None, chrf_word_order: int = 0) -> Metric:
    """Build one sacrebleu metric with the sacrebleu command's defaults, so scores are comparable."""
    if name == "bleu":
        if tokenize is not None and tokenize not in BLEU.TOKENIZERS:
            raise ConfigError(f"unknown BLEU tokenizer {tokenize!r}; choose from {', '.join(BLEU.TOKENIZERS)}")
        try:
            return BLEU(lowercase=lowercase, tokenize=tokenize)
        except (RuntimeError, ImportError, OSError) as error:  # mecab not installed, spm model not downloadable
            reason = " ".join(str(error).split()) or type(error).__name__
            raise ConfigError(f"BLEU tokenizer {tokenize!r} cannot be used: {reason}") from None
    if name == "chrf":
        if chrf_word_order < 0:
            raise ConfigError(f"chrF word order must be 0 or more, got {chrf_word_order}")
        return CHRF(word_order=chrf_word_order)
    if name == "ter":
        return TER()
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


def corpus_scores(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], metrics: Sequence[str] = ("bleu",), **options
) -> list[MetricResult]:
    """Score a corpus with each requested metric (once each, in METRICS order, as the sacrebleu command does)."""
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    named = [(f"reference {k}", list(stream)) for k, stream in enumerate(references, start=1)]
    check_parallel(("hypotheses", list(hypotheses)), named)
    results = []
    for name in (name for name in METRICS if name in metrics):
        metric = make_metric(name, **options)
        score = metric.corpus_score(list(hypotheses), [list(stream) for stream in references])
        results.append(MetricResult(name, score, metric.get_signature().format()))
    return results


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """Corpus BLEU (13a, cased, one reference) and its signature: the training loop's validation score."""
    (result,) = corpus_scores(hypotheses, [references], ("bleu",))
    return result.score.score, result.signature
