"""WER, CER and exact match: checked against hand-worked cases and a brute-force edit distance, not against themselves."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from seq2seq.errorrates import edit_distance
from seq2seq.errors import DataError
from seq2seq.metrics import compare_systems, corpus_scores, sentence_scores

runner = CliRunner()


def brute_force_distance(a: list, b: list) -> int:
    """The textbook dynamic programme over the whole table."""
    table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return table[-1][-1]


@pytest.mark.parametrize("alphabet", ["ab", "abcdefghij", [f"w{n}" for n in range(500)]], ids=["2", "10", "500"])
def test_edit_distance_equals_the_brute_force_table_on_random_sequences(alphabet) -> None:
    rng = random.Random(len(alphabet))
    for _ in range(300):
        a = [rng.choice(alphabet) for _ in range(rng.randint(0, 150))]  # beyond 64 items: several machine words
        b = [rng.choice(alphabet) for _ in range(rng.randint(0, 150))]
        assert edit_distance(a, b) == brute_force_distance(a, b), (a, b)


def test_hand_worked_wer_cer_and_exact() -> None:
    refs = ["the cat sat on the mat", "a b"]
    hyps = ["the cat sit on mat", "a  b "]  # one substitution and one deletion; the second equal up to spaces
    wer, cer, exact = (result.score.score for result in corpus_scores(hyps, [refs], ["wer", "cer", "exact"]))
    assert wer == pytest.approx(100 * 2 / 8)       # 2 edits over 6 + 2 reference words
    assert cer == pytest.approx(100 * 5 / 25)      # "sat"->"sit" 1, "the " deleted 4; over 22 + 3 characters
    assert exact == pytest.approx(50.0)


def test_the_corpus_rate_sums_edits_and_reference_words_rather_than_averaging_lines() -> None:
    refs = ["a", "b c d e f g h i j k"]
    hyps = ["x", "b c d e f g h i j k"]  # line rates 100% and 0%: their mean would be 50%
    (wer,) = corpus_scores(hyps, [refs], ["wer"])
    assert wer.score.score == pytest.approx(100 * 1 / 11)


def test_several_references_take_the_nearest_and_exact_takes_any() -> None:
    first, second = ["a b c d", "x y"], ["a b", "x y z"]
    hyps = ["a b", "x y z"]  # equal to the second reference of each line
    wer, exact = (r.score.score for r in corpus_scores(hyps, [first, second], ["wer", "exact"]))
    assert (wer, exact) == (0.0, 100.0)
    (wer_one,) = corpus_scores(hyps, [first], ["wer"])
    assert wer_one.score.score == pytest.approx(100 * 3 / 6)


def test_an_empty_line_in_a_second_reference_file_is_no_reference() -> None:
    """Words with two pronunciations beside words with one: the second file is empty on the latter's lines."""
    hyps, first, second = ["K AE T", "T AH M EY T OW"], ["K AE T", "T AH M AA T OW"], ["", "T AH M EY T OW"]
    wer, exact = (r.score.score for r in corpus_scores(hyps, [first, second], ["wer", "exact"]))
    assert (wer, exact) == (0.0, 100.0)


def test_a_varying_number_of_references_signs_as_nrefs_var() -> None:
    hyps, first, second = ["a b", "c d"], ["a b", "c d"], ["a c", ""]  # the second line has one reference
    (varying,) = corpus_scores(hyps, [first, second], ["wer"])
    (both,) = corpus_scores(hyps, [first, ["a c", "c e"]], ["wer"])
    assert varying.signature.startswith("nrefs:var|") and both.signature.startswith("nrefs:2|")


def test_signatures_say_what_was_counted() -> None:
    wer, cer, exact = corpus_scores(["a b"], [["a b"]], ["wer", "cer", "exact"])
    assert wer.signature.startswith("nrefs:1|unit:word|case:mixed|norm:whitespace|version:seq2seq-")
    assert "unit:char" in cer.signature and "spaces:yes" in cer.signature
    assert exact.signature.startswith("nrefs:1|case:mixed|norm:whitespace")


def test_sentence_level_wer_is_each_lines_rate() -> None:
    scores, _ = sentence_scores(["a b c", "a"], [["a b d", "a b"]], "wer")
    assert [score.score for score in scores] == pytest.approx([100 / 3, 50.0])


def test_the_paired_bootstrap_runs_for_every_new_metric() -> None:
    rng = random.Random(0)
    refs = [" ".join(rng.choice("abcd") for _ in range(6)) for _ in range(60)]
    base = [" ".join(word if rng.random() > 0.3 else "z" for word in ref.split()) for ref in refs]
    comparison = compare_systems([("base", base), ("same", base), ("perfect", refs)], [refs], ["wer", "cer", "exact"],
                                 paired_bs=200)
    assert comparison.metrics == ["WER", "CER", "EXACT"]
    (base_wer, *_), (same_wer, *_), (perfect_wer, perfect_cer, perfect_exact) = comparison.cells
    assert perfect_wer.score == 0.0 and perfect_cer.score == 0.0 and perfect_exact.score == 100.0
    assert same_wer.p_value == 1.0 and perfect_wer.p_value < 0.05
    assert "bs:200" in comparison.signatures["WER"] and "seed:" in comparison.signatures["WER"]


def test_an_empty_reference_line_is_refused_for_wer_and_scored_for_exact() -> None:
    with pytest.raises(DataError, match="reference 1:2: empty reference line"):
        corpus_scores(["a", "b"], [["a", " "]], ["wer"])
    (exact,) = corpus_scores(["a", ""], [["a", ""]], ["exact"])
    assert exact.score.score == 100.0


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    Path("ref.txt").write_text("AE B D\nK AE T\n", encoding="utf-8")
    Path("hyp.txt").write_text("AE B T\nK AE T\n", encoding="utf-8")
    Path("short.txt").write_text("AE B T\n", encoding="utf-8")
    Path("hole.txt").write_text("AE B D\n\n", encoding="utf-8")
    return tmp_path


def test_the_command_prints_wer_cer_and_exact_as_json_and_text(files: Path) -> None:
    result = runner.invoke(app, ["score", "ref.txt", "-i", "hyp.txt", "-m", "wer,cer,exact"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(row["name"], row["score"]) for row in rows] == [("WER", 16.7), ("CER", 8.3), ("EXACT", 50.0)]
    text = runner.invoke(app, ["score", "ref.txt", "-i", "hyp.txt", "-m", "wer", "-f", "text", "-w", "2"])
    assert text.stdout.startswith("WER|nrefs:1|unit:word|") and text.stdout.rstrip().endswith(" = 16.67")


@pytest.mark.parametrize(("args", "code", "message"), [
    (["ref.txt", "-i", "hyp.txt", "-m", "per"], 2, "unknown metric 'per'"),
    (["ref.txt", "-i", "short.txt", "-m", "wer"], 1, "short.txt has 1 lines but ref.txt has 2"),
    (["hole.txt", "-i", "hyp.txt", "-m", "cer"], 1, "hole.txt:2: empty reference line"),
])
def test_bad_input_is_one_line_and_an_exit_code(files: Path, args: list[str], code: int, message: str) -> None:
    result = runner.invoke(app, ["score", *args])
    assert result.exit_code == code
    (line,) = result.stderr.splitlines()
    assert message in line


def test_the_command_scores_wer_line_by_line_and_in_a_paired_test(files: Path) -> None:
    lines = runner.invoke(app, ["score", "ref.txt", "-i", "hyp.txt", "-m", "wer", "--sentence-level", "-b", "-w", "2"])
    assert lines.exit_code == 0, lines.output
    assert lines.stdout.split() == ["33.33", "0.00"]
    paired = runner.invoke(app, ["score", "ref.txt", "-i", "hyp.txt", "ref.txt", "-m", "wer,exact", "--paired-bs",
                                 "--paired-bs-n", "50", "-f", "json"])
    assert paired.exit_code == 0, paired.output
    table = json.loads(paired.stdout)
    assert [row["WER"]["score"] for row in table["systems"]] == pytest.approx([100 / 6, 0.0])
    assert "bs:50" in table["signatures"]["WER"] and "bs:50" in table["signatures"]["EXACT"]
