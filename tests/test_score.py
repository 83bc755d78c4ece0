"""`seq2seq score` prints byte for byte what the `sacrebleu` command prints; errors are one line, no traceback."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import typer
from typer.testing import CliRunner

from seq2seq import metrics
from seq2seq.errors import ConfigError, DataError

try:  # the real app, once every subcommand module exists
    from cli.main import app
except ImportError:
    from cli import score as _score

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Stand-in group so that `score` stays a subcommand."""

    _score.register(app)

REFS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "I would like a cup of tea, please.",
    "The meeting has been moved to Thursday afternoon.",
    "She has lived in Berlin for ten years.",
]
REFS2 = [
    "The cat was sitting on the mat.",
    "The quick brown fox jumped over a lazy dog.",
    "Could I have a cup of tea, please?",
    "The meeting was moved to Thursday afternoon.",
    "She's been living in Berlin for ten years.",
]
HYPS = [
    "The cat sat on a mat.",
    "A fast brown fox jumps over the lazy dog.  ",  # trailing spaces: both tools drop them
    "I want a cup of tea please.",
    "The meeting is moved to Thursday.",
    "She lived in Berlin ten years.",
]


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ref.en, ref2.en (CRLF), ref.en.gz, hyp.en and short.en in the current folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SACREBLEU_FORMAT", raising=False)
    (tmp_path / "ref.en").write_text("\n".join(REFS) + "\n", encoding="utf-8")
    (tmp_path / "ref2.en").write_bytes(("\r\n".join(REFS2) + "\r\n").encode())
    (tmp_path / "ref.en.gz").write_bytes(gzip.compress(("\n".join(REFS) + "\n").encode()))
    (tmp_path / "hyp.en").write_text("\n".join(HYPS) + "\n", encoding="utf-8")
    (tmp_path / "short.en").write_text("\n".join(HYPS[:3]) + "\n", encoding="utf-8")
    return tmp_path


def ours(args: list[str], stdin: str | None = None):
    return CliRunner().invoke(app, ["score", *args], input=stdin)


def sacrebleu_cli(args: list[str], stdin: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "SACREBLEU_FORMAT"}
    done = subprocess.run(
        [sys.executable, "-m", "sacrebleu", *args], input=stdin, capture_output=True, text=True,
        encoding="utf-8", env=env, check=True,
    )
    return done.stdout


@pytest.mark.parametrize(
    ("our_args", "their_args"),
    [
        pytest.param(["ref.en", "-i", "hyp.en"], ["ref.en", "-i", "hyp.en"], id="default-json-bleu"),
        pytest.param(
            ["ref.en", "-i", "hyp.en", "-m", "bleu", "-m", "chrf", "-m", "ter", "-f", "text", "-w", "2"],
            ["ref.en", "-i", "hyp.en", "-m", "bleu", "chrf", "ter", "-f", "text", "-w", "2"],
            id="three-metrics-text",
        ),
        pytest.param(
            ["ref.en", "-i", "hyp.en", "-m", "ter,chrf bleu"],
            ["ref.en", "-i", "hyp.en", "-m", "ter", "chrf", "bleu"],
            id="comma-list-json",
        ),
        pytest.param(
            ["ref.en", "-i", "hyp.en", "-b", "-w", "4"], ["ref.en", "-i", "hyp.en", "-b", "-w", "4"], id="score-only"
        ),
        pytest.param(
            ["ref.en", "-i", "hyp.en", "-b", "-m", "bleu,chrf", "-f", "text"],
            ["ref.en", "-i", "hyp.en", "-b", "-m", "bleu", "chrf", "-f", "text"],
            id="score-only-text-two",
        ),
        pytest.param(
            ["ref.en", "ref2.en", "-i", "hyp.en", "-m", "bleu,chrf,ter"],
            ["ref.en", "ref2.en", "-i", "hyp.en", "-m", "bleu", "chrf", "ter"],
            id="multi-reference",
        ),
        pytest.param(["ref.en.gz", "-i", "hyp.en"], ["ref.en.gz", "-i", "hyp.en"], id="gzipped-reference"),
        pytest.param(
            ["ref.en", "-i", "hyp.en", "-lc", "-tok", "intl", "-m", "bleu,chrf", "-cw", "2", "-f", "text"],
            ["ref.en", "-i", "hyp.en", "-lc", "-tok", "intl", "-m", "bleu", "chrf", "-cw", "2", "-f", "text"],
            id="lowercase-intl-chrf++",
        ),
    ],
)
def test_output_is_identical_to_sacrebleu(corpus: Path, our_args: list[str], their_args: list[str]) -> None:
    result = ours(our_args)
    assert result.exit_code == 0, result.output
    assert result.stdout == sacrebleu_cli(their_args)


def test_stdin_hypotheses(corpus: Path) -> None:
    text = (corpus / "hyp.en").read_text(encoding="utf-8")
    expected = sacrebleu_cli(["ref.en", "-m", "bleu", "chrf"], stdin=text)
    for args in (["ref.en", "-m", "bleu,chrf"], ["ref.en", "-i", "-", "-m", "bleu,chrf"]):
        result = ours(args, stdin=text)
        assert result.exit_code == 0, result.output
        assert result.stdout == expected


def test_format_from_environment_like_sacrebleu(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SACREBLEU_FORMAT", "text")
    assert ours(["ref.en", "-i", "hyp.en"]).stdout.startswith("BLEU|nrefs:1|")
    assert ours(["ref.en", "-i", "hyp.en", "-f", "json"]).stdout.startswith("{")


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_line_count_mismatch_names_both_files_and_counts(corpus: Path) -> None:
    assert_one_line_error(ours(["ref.en", "-i", "short.en"]), 1, "short.en", "3", "ref.en", "5")
    assert_one_line_error(ours(["ref.en", "short.en", "-i", "hyp.en"]), 1, "hyp.en", "5", "short.en", "3")


def test_missing_files(corpus: Path) -> None:
    assert_one_line_error(ours(["nope.en", "-i", "hyp.en"]), 1, "nope.en", "no such file")
    assert_one_line_error(ours(["ref.en", "-i", "nope.en"]), 1, "nope.en", "no such file")


def test_invalid_utf8_names_file_and_line(corpus: Path) -> None:
    (corpus / "bad.en").write_bytes(b"fine\nbad \xff byte\nfine\nfine\nfine\n")
    assert_one_line_error(ours(["ref.en", "-i", "bad.en"]), 1, "bad.en:2", "UTF-8")


def test_sacrebleu_style_metric_list_gets_a_hint(corpus: Path) -> None:
    assert_one_line_error(ours(["ref.en", "-i", "hyp.en", "-m", "bleu", "chrf"]), 1, "-m bleu -m chrf")


def test_unknown_metric_is_a_usage_error(corpus: Path) -> None:
    assert_one_line_error(ours(["ref.en", "-i", "hyp.en", "-m", "bleu,meteor"]), 2, "meteor")


def test_bleu_matches_corpus_bleu() -> None:
    score, signature = metrics.bleu(HYPS, REFS)
    expected = sacrebleu.corpus_bleu(HYPS, [REFS])
    assert score == pytest.approx(expected.score)
    assert 0 < score < 100
    assert signature == f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"
    assert metrics.bleu(REFS, REFS)[0] == pytest.approx(100.0)


def test_corpus_scores_in_sacrebleu_order_and_checked() -> None:
    results = metrics.corpus_scores(HYPS, [REFS, REFS2], ["ter", "bleu", "ter"])
    assert [r.name for r in results] == ["bleu", "ter"]
    assert results[0].score.score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, REFS2]).score)
    assert results[1].score.score == pytest.approx(sacrebleu.corpus_ter(HYPS, [REFS, REFS2]).score)
    with pytest.raises(DataError, match="hypotheses has 5 lines but reference 2 has 3"):
        metrics.corpus_scores(HYPS, [REFS, REFS2[:3]], ["bleu"])
    with pytest.raises(DataError, match="out.txt has 5 lines but ref.txt has 4"):
        metrics.check_parallel(("out.txt", HYPS), [("ref.txt", REFS[:4])])
    with pytest.raises(ConfigError):
        metrics.make_metric("bleu", tokenize="no-such-tokenizer")


# --- several systems -------------------------------------------------------------------------------

HYPS_B = [
    "A cat is on the mat.",
    "The brown dog jumps over a fox.",
    "I like tea.",
    "Meeting on Thursday.",
    "She is in Berlin.",
]
HYPS_C = [
    "The cat sat on the mat.",
    "A quick brown fox jumped over the lazy dog.",
    "I would like a cup of tea.",
    "The meeting was moved to Thursday afternoon.",
    "She lived in Berlin for ten years.",
]
SCORE = r"(\d+\.\d+) \((\d+\.\d+) ± (\d+\.\d+)\)"  # a paired-test cell: score (mean ± 95% CI)
P_VALUE = r"\(p = (\d\.\d{4})\)(\*?)"
SIGNATURE = r"^ - (\S+) +(nrefs:\S+)$"


@pytest.fixture
def systems(corpus: Path) -> Path:
    """b.en (worse), c.en (better) and same.en (a copy of hyp.en) next to the corpus files."""
    for name, lines in (("b.en", HYPS_B), ("c.en", HYPS_C), ("same.en", HYPS)):
        (corpus / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return corpus


def test_several_systems_give_sacrebleus_rows_and_the_signatures_once(systems: Path) -> None:
    result = ours(["ref.en", "ref2.en", "-i", "hyp.en", "b.en", "c.en", "-m", "bleu,chrf,ter", "-w", "2"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)  # piped, no -f: JSON, as sacrebleu
    theirs = sacrebleu_cli(["ref.en", "ref2.en", "-i", "hyp.en", "b.en", "c.en", "-m", "bleu", "chrf", "ter", "-w", "2"])
    assert printed["systems"] == json.loads(theirs)
    their_text = sacrebleu_cli(["ref.en", "ref2.en", "-i", "hyp.en", "b.en", "c.en", "-m", "bleu", "chrf", "ter", "-f", "text"])
    assert printed["signatures"] == dict(re.findall(SIGNATURE, their_text, re.M))


def test_paired_bootstrap_numbers_and_signatures_equal_sacrebleus(systems: Path) -> None:
    args = ["ref.en", "-i", "hyp.en", "b.en", "c.en", "-f", "text", "--paired-bs"]
    result = ours([*args[:5], "-m", "bleu,chrf,ter", *args[5:]])
    assert result.exit_code == 0, result.output
    theirs = sacrebleu_cli([*args[:5], "-m", "bleu", "chrf", "ter", *args[5:]])
    assert re.findall(SCORE, result.stdout) == re.findall(SCORE, theirs) != []
    assert re.findall(P_VALUE, result.stdout) == re.findall(P_VALUE, theirs) != []
    assert re.findall(SIGNATURE, result.stdout, re.M) == re.findall(SIGNATURE, theirs, re.M)
    assert "bs:1000|seed:12345|" in result.stdout
    assert result.stdout.splitlines()[1].startswith("Baseline: hyp.en ")


def test_paired_bootstrap_of_a_system_against_itself_is_not_significant(systems: Path) -> None:
    result = ours(["ref.en", "-i", "hyp.en", "same.en", "-m", "bleu,chrf", "--paired-bs", "-f", "json"])
    assert result.exit_code == 0, result.output
    baseline, copy = json.loads(result.stdout)["systems"]
    assert baseline["system"] == "Baseline: hyp.en" and baseline["BLEU"]["p_value"] is None
    assert copy["BLEU"]["p_value"] == copy["chrF2"]["p_value"] == 1.0
    assert copy["BLEU"]["score"] == baseline["BLEU"]["score"]
    text = ours(["ref.en", "-i", "hyp.en", "same.en", "--paired-bs", "-f", "text"]).stdout
    assert "(p = 1.0000)" in text and "(p = 1.0000)*" not in text


def test_input_files_follow_one_i_or_each_their_own(systems: Path) -> None:
    one_flag = ours(["ref.en", "-i", "hyp.en", "b.en", "-f", "text"])
    own_flags = ours(["ref.en", "-i", "hyp.en", "-i", "b.en", "-f", "text"])
    assert one_flag.exit_code == 0, one_flag.output
    assert one_flag.stdout == own_flags.stdout
    assert [line.split()[0] for line in one_flag.stdout.splitlines()[1:3]] == ["hyp.en", "b.en"]


@pytest.mark.parametrize(
    ("args", "spread"),
    [
        (["r", "-i", "a", "b", "-m", "bleu", "r2"], ["r", "-i", "a", "-i", "b", "-m", "bleu", "r2"]),
        (["r", "--input", "a", "-", "-b"], ["r", "--input", "a", "-i", "-", "-b"]),
        (["r", "-i", "a", "--", "b"], ["r", "-i", "a", "--", "b"]),
        (["r", "-m", "bleu", "chrf", "-i", "a"], ["r", "-m", "bleu", "chrf", "-i", "a"]),
    ],
)
def test_words_after_i_are_systems_until_the_next_option(args: list[str], spread: list[str]) -> None:
    from cli.score import spread_inputs

    assert spread_inputs(args) == spread


def test_several_systems_on_a_terminal_get_a_rich_table(systems: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cli.score._stdout_is_terminal", lambda: True)
    result = ours(["ref.en", "-i", "hyp.en", "b.en", "-m", "bleu,chrf"])
    assert result.exit_code == 0, result.output
    assert "┃ System" in result.stdout and "chrF2" in result.stdout
    assert result.stdout.count("nrefs:1|") == 2  # each signature once, whole


@pytest.mark.parametrize(
    "extra", [[], ["-m", "chrf", "-w", "3"], ["-m", "ter", "-b"], ["-lc", "-tok", "intl"]], ids=["bleu", "chrf", "ter", "bleu-lc-intl"]
)
def test_sentence_level_is_identical_to_sacrebleu(corpus: Path, extra: list[str]) -> None:
    result = ours(["ref.en", "ref2.en", "-i", "hyp.en", "--sentence-level", *extra])
    assert result.exit_code == 0, result.output
    assert result.stdout == sacrebleu_cli(["ref.en", "ref2.en", "-i", "hyp.en", "-sl", *extra])
    assert len(result.stdout.splitlines()) == len(HYPS)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["ref.en", "-i", "hyp.en", "b.en", "-sl"], "one system with one metric"),
        (["ref.en", "-i", "hyp.en", "-sl", "-m", "bleu,chrf"], "one system with one metric"),
        (["ref.en", "-i", "hyp.en", "b.en", "-b"], "-f json"),
        (["ref.en", "-i", "hyp.en", "--paired-bs"], "at least two"),
        (["ref.en", "-i", "hyp.en", "hyp.en", "--paired-bs"], "at least two"),
        (["ref.en", "-i", "hyp.en", "b.en", "hyp.en"], "given twice"),
        (["-i", "hyp.en", "b.en"], "before -i"),
    ],
)
def test_meaningless_combinations_are_usage_errors(systems: Path, args: list[str], fragment: str) -> None:
    result = ours(args)
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr.strip().splitlines()[-1] and "Traceback" not in result.output


def test_compare_systems_scores_each_as_corpus_bleu() -> None:
    comparison = metrics.compare_systems([("a", HYPS), ("b", HYPS_B)], [REFS], ["ter", "bleu"])
    assert comparison.metrics == ["BLEU", "TER"] and comparison.paired_bs == 0
    assert [cells[0].score for cells in comparison.cells] == pytest.approx(
        [sacrebleu.corpus_bleu(HYPS, [REFS]).score, sacrebleu.corpus_bleu(HYPS_B, [REFS]).score]
    )
    with pytest.raises(DataError, match="b has 3 lines"):
        metrics.compare_systems([("a", HYPS), ("b", HYPS_B[:3])], [REFS])


def test_sentence_scores_are_sentence_bleu() -> None:
    scores, signature = metrics.sentence_scores(HYPS, [REFS])
    assert [s.score for s in scores] == pytest.approx([sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(HYPS, REFS)])
    assert "eff:yes" in signature
