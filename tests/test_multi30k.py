"""A short run on real Multi30k text (skipped where ../shared/data/multi30k is absent)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

MULTI30K = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"
pytestmark = pytest.mark.skipif(not (MULTI30K / "train.de.gz").is_file(), reason=f"{MULTI30K} is not here")


def _head(source: Path, target: Path, lines: int) -> None:
    with gzip.open(source, "rt", encoding="utf-8") as file:
        target.write_text("".join(next(file) for _ in range(lines)), encoding="utf-8")


def test_gzipped_real_corpus_trains_translates_and_scores(tmp_path: Path) -> None:
    for split, lines in (("train", 1000), ("val", 50)):
        for lang in ("de", "en"):
            _head(MULTI30K / f"{split}.{lang}.gz", tmp_path / f"{split}.{lang}", lines)
    runner = CliRunner()
    trained = runner.invoke(app, [
        "train", "--source", str(MULTI30K / "train.de.gz"), "--target", str(MULTI30K / "train.en.gz"),
        "--valid-source", str(tmp_path / "val.de"), "--valid-target", str(tmp_path / "val.en"),
        "--output", str(tmp_path / "run"), "--vocab-size", "500", "--emb-dim", "32", "--hidden-dim", "64",
        "--max-steps", "10", "--valid-every", "10", "--batch-tokens", "3000", "-q",
    ])
    assert trained.exit_code == 0, trained.output
    translated = runner.invoke(app, ["translate", "-m", str(tmp_path / "run" / "best.pt"), "--beam-size", "2", "-q",
                                     "-i", str(tmp_path / "val.de"), "-o", str(tmp_path / "hyp.en")])
    assert translated.exit_code == 0, translated.output
    assert len((tmp_path / "hyp.en").read_text(encoding="utf-8").splitlines()) == 50
    scored = runner.invoke(app, ["score", str(tmp_path / "val.en"), "-i", str(tmp_path / "hyp.en"), "-f", "text"])
    assert scored.exit_code == 0 and scored.stdout.startswith("BLEU|nrefs:1|case:mixed")
