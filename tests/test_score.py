"""`seq2seq score` prints byte for byte what the `sacrebleu` command prints; errors are one line, no traceback."""

from __future__ import annotations

import gzip
import os
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
