"""`seq2seq info` reports what a model file holds, for people and (with --json) for scripts."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from seq2seq import checkpoint
from seq2seq.config import Config, ModelConfig
from seq2seq.tokenizer import Tokenizers

runner = CliRunner()
SIGNATURE = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"


@pytest.fixture
def model_file(tmp_path: Path, tokenizers: Tokenizers) -> tuple[Path, int]:
    """A tiny checkpoint saved as training saves one at step 30, and its parameter count."""
    config = Config(model=ModelConfig(emb_dim=8, hidden_dim=16))
    model = checkpoint.build_model(config, tokenizers)
    path = tmp_path / "best.pt"
    checkpoint.save(path, config=config, tokenizers=tokenizers, model=model, step=30,
                    info={"valid_bleu": 12.5, "valid_loss": 1.25, "bleu_signature": SIGNATURE})
    return path, sum(param.numel() for param in model.parameters())


def test_json_reports_what_the_file_holds(model_file: tuple[Path, int], tokenizers: Tokenizers) -> None:
    path, parameters = model_file
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["step"] == 30 and facts["parameters"] == parameters
    assert facts["vocabulary"] == {"source": tokenizers.src.vocab_size, "target": tokenizers.tgt.vocab_size, "joint": True,
                                   "byte_fallback": False}  # the suite's tokenizer is too small for byte pieces
    assert facts["info"]["valid_bleu"] == 12.5 and facts["info"]["bleu_signature"] == SIGNATURE
    assert facts["info"]["torch"] == version("torch")
    assert facts["config"]["model"]["hidden_dim"] == 16
    assert facts["training_state"] is False


def test_text_shows_scores_signature_versions_and_config(model_file: tuple[Path, int]) -> None:
    path, parameters = model_file
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert f"parameters       {parameters:,}" in lines
    assert "validation BLEU  12.50" in lines and f"BLEU signature   {SIGNATURE}" in lines
    assert any(line.startswith("made with") and f"torch {version('torch')}" in line for line in lines)
    assert "hidden_dim = 16" in lines and "[search]" in lines


def test_a_file_that_is_not_a_model_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    for path in (tmp_path / "notes.txt", tmp_path / "nope.pt"):
        result = runner.invoke(app, ["info", str(path)])
        assert result.exit_code == 1, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and path.name in result.stderr
        assert "Traceback" not in result.output


def test_help_has_examples() -> None:
    result = runner.invoke(app, ["info", "--help"])
    assert result.exit_code == 0 and "Examples" in result.stdout
