"""Word error rate, character error rate and exact match: the metrics of character-level tasks.

Grapheme-to-phoneme, transliteration, spelling correction and inflection are judged by how many
outputs are wrong and by how much, not by n-gram overlap. The three are sacrebleu `Metric`s, so that
the corpus score, the per-line score and sacrebleu's paired bootstrap test treat them as BLEU:

- WER: word-level (Levenshtein) edit distance summed over lines, over the reference words, in percent.
  Words are split at whitespace.
- CER: the same over characters. Runs of whitespace count as one space, and leading and trailing
  whitespace none; the spaces between words count as characters.
- exact: the share of lines equal to a reference, in percent, whitespace runs again counting as one space.

With several references, a line's distance is to its nearest reference (the fewest edits; on a tie,
the first given), and it is exact when it equals any of them. An empty reference line counts as no
reference, so that words with two pronunciations and words with one can share reference files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sacrebleu.metrics.base import Metric, Score, Signature

from seq2seq import __version__


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance (insertions, deletions and substitutions, each costing 1) between two sequences.

    Myers' bit-parallel algorithm, in Hyyrö's formulation for edit distance: one column of the
    dynamic-programming table is held as the bits of a few Python integers, so a line costs len(b)
    steps of integer operations instead of len(a) x len(b) Python steps.
    """
    if not a or not b:
        return len(a) + len(b)
    positions: dict[Any, int] = {}
    for index, item in enumerate(a):
        positions[item] = positions.get(item, 0) | 1 << index
    full, top = (1 << len(a)) - 1, 1 << (len(a) - 1)
    plus, minus, distance = full, 0, len(a)  # vertical +1 and -1 differences of the current column
    for item in b:
        equal = positions.get(item, 0)
        vertical = equal | minus
        horizontal = ((((equal & plus) + plus) & full) ^ plus) | equal
        up = minus | (~(horizontal | plus) & full)
        down = plus & horizontal
        if up & top:
            distance += 1
        elif down & top:
            distance -= 1
        up = (up << 1 | 1) & full
        down = (down << 1) & full
        plus = down | (~(vertical | up) & full)
        minus = up & vertical
    return distance


def normalized(line: str) -> str:
    """The line with every run of whitespace one space, and none at either end."""
    return " ".join(line.split())


class ErrorRateSignature(Signature):
    """What was counted: the unit, case, whitespace handling; this package's version instead of sacrebleu's."""

    def __init__(self, args: dict) -> None:
        super().__init__(args)
        self._abbr.update({"unit": "u", "case": "c", "spaces": "sp", "norm": "nr"})
        self.info.update(args["_description"])
        self.info["version"] = f"seq2seq-{__version__}"


class _ByLine(Metric):
    """A metric whose statistics for a line are a pair of counts, summed over the corpus and divided."""

    _SIGNATURE_TYPE = ErrorRateSignature
    name = ""

    def __init__(self) -> None:
        super().__init__()
        self._description: dict[str, Any] = {}

    def _preprocess_segment(self, sent: str) -> str:
        return normalized(sent)

    def _cache_references(self, references: Sequence[Sequence[str]]) -> list[Any]:
        """An empty reference stands for none (lines with fewer references than others), as sacrebleu's None
        does: a count that varies from line to line shows as nrefs:var in the signature."""
        return super()._cache_references([[ref or None for ref in stream] for stream in references])

    def _extract_reference_info(self, refs: Sequence[str]) -> dict[str, Any]:
        """A line's references; a line whose references are all empty is compared with the empty line."""
        return {"refs": list(refs) or [""]}

    def _compute_score_from_stats(self, stats: Sequence[float]) -> Score:
        counted, total = stats
        return Score(self.name, 100.0 * counted / total if total else 0.0)

    def _aggregate_and_compute(self, stats: list[list[float]]) -> Score:
        return self._compute_score_from_stats([sum(column) for column in zip(*stats)])


class ErrorRate(_ByLine):
    """WER (unit "word") or CER (unit "char")."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit
        self.name = "WER" if unit == "word" else "CER"
        self._description = {"unit": unit, "case": "mixed", "spaces": "yes" if unit == "char" else None,
                             "norm": "whitespace"}

    def _units(self, line: str) -> Sequence[str]:
        return line.split(" ") if self.unit == "word" and line else list(line)

    def _compute_segment_statistics(self, hypothesis: str, ref_kwargs: dict) -> list[int]:
        """[edits to the nearest reference, that reference's length]."""
        hyp = self._units(hypothesis)
        nearest = min((edit_distance(self._units(ref), hyp), index) for index, ref in enumerate(ref_kwargs["refs"]))
        return [nearest[0], len(self._units(ref_kwargs["refs"][nearest[1]]))]


class ExactMatch(_ByLine):
    """The share of lines equal to one of their references."""

    name = "EXACT"

    def __init__(self) -> None:
        super().__init__()
        self._description = {"case": "mixed", "norm": "whitespace"}

    def _compute_segment_statistics(self, hypothesis: str, ref_kwargs: dict) -> list[int]:
        return [int(hypothesis in ref_kwargs["refs"]), 1]
