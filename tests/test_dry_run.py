"""`seq2seq train --dry-run` says what a run would do (counts, coverage, size, speed) and writes nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from seq2seq.config import Config, DataConfig, ModelConfig, TokenizerConfig, TrainConfig
from seq2seq.inspection import preview_training, unknown_share
from seq2seq.startup import unseen_characters

runner = CliRunner()
LONG = " ".join(["the river"] * 40)  # far over a max_length of 50 pieces


@pytest.fixture
def files(tmp_path: Path, make_pairs: Callable[..., tuple[list[str], list[str]]]) -> dict[str, Path]:
    """200 good training pairs plus one with an empty target and one too long; 20 validation pairs, one with 'ß'."""
    src, tgt = make_pairs(200, seed=1)
    src += ["the cat", LONG]
    tgt += ["", LONG.upper()]
    valid_src, valid_tgt = make_pairs(20, seed=2)
    valid_src[0] += " straße"
    paths = {}
    for name, lines in (("source", src), ("target", tgt), ("valid_source", valid_src), ("valid_target", valid_tgt)):
        paths[name] = tmp_path / f"{name}.txt"
        paths[name].write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return paths


def _args(files: dict[str, Path], output: Path) -> list[str]:
    return ["train", "--source", str(files["source"]), "--target", str(files["target"]),
            "--valid-source", str(files["valid_source"]), "--valid-target", str(files["valid_target"]),
            "--output", str(output), "--vocab-size", "60", "--emb-dim", "8", "--hidden-dim", "16",
            "--max-length", "50", "--batch-tokens", "300", "--dry-run"]


def test_dry_run_prints_counts_and_creates_no_run_folder(files: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "runs" / "toy"
    result = runner.invoke(app, _args(files, output))
    assert result.exit_code == 0, result.output
    report = result.stdout
    assert "202 lines: 200 kept, 1 skipped with an empty side, 1 skipped as over 50 pieces" in report
    assert "20 lines (0 with an empty side)" in report
    assert "'ß' x1" in report  # the validation character training never saw
    for label in ("parameters", "batches", "time", "an epoch", "nothing was written"):
        assert label in report, label
    assert not (tmp_path / "runs").exists()


def test_dry_run_reads_the_tokenizer_cache_and_never_writes_it(files: dict[str, Path], tmp_path: Path) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    first = runner.invoke(app, [*_args(files, tmp_path / "dry"), *cache])
    assert first.exit_code == 0, first.output
    assert "from the tokenizer cache" not in first.stdout
    assert not (tmp_path / "cache").exists()
    real = [arg for arg in _args(files, tmp_path / "run") if arg != "--dry-run"]
    assert runner.invoke(app, [*real, *cache, "--max-steps", "1", "-q"]).exit_code == 0
    second = runner.invoke(app, [*_args(files, tmp_path / "dry"), *cache])
    assert second.exit_code == 0, second.output
    assert "; from the tokenizer cache" in second.stdout


def test_dry_run_refuses_parallel_files_of_different_lengths(files: dict[str, Path], tmp_path: Path) -> None:
    files["target"].write_text("ONE\nTWO\n", encoding="utf-8")
    result = runner.invoke(app, [*_args(files, tmp_path / "run"), "-q"])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: {files['source']} has 202 lines but {files['target']} has 2; parallel files must have equal line counts"]
    assert result.stdout == "" and not (tmp_path / "run").exists()


def test_dry_run_says_when_the_run_folder_is_in_the_way(files: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"a run was here")
    result = runner.invoke(app, [*_args(files, tmp_path / "run"), "-q"])
    assert result.exit_code == 2 and "already holds a run" in result.stderr


def test_the_preview_counts_what_training_would_and_extrapolates_the_timed_updates(files: dict[str, Path]) -> None:
    cfg = Config(data=DataConfig(source=str(files["source"]), target=str(files["target"]),
                                 valid_source=str(files["valid_source"]), valid_target=str(files["valid_target"]),
                                 max_length=50),
                 tokenizer=TokenizerConfig(vocab_size=60), model=ModelConfig(emb_dim=8, hidden_dim=16),
                 train=TrainConfig(batch_tokens=300))
    preview = preview_training(cfg, timed_updates=3)
    assert (preview.train_lines, preview.train.kept, preview.train.empty, preview.train.too_long) == (202, 200, 1, 1)
    assert preview.joint and preview.src_vocab == preview.tgt_vocab
    assert preview.timed_updates == 3 and preview.seconds_per_update > 0
    assert preview.seconds_per_epoch == pytest.approx(preview.seconds_per_update * preview.batches_per_epoch)
    assert preview.batches_per_epoch > 3  # 200 pairs under a 300-token budget
    assert preview.src_unseen == [("ß", 1)] and preview.tgt_unseen == []


def test_unknown_share_counts_the_pieces_the_tokenizer_cannot_name(tokenizers) -> None:
    assert unknown_share(tokenizers.src, ["the cat"]) == 0.0
    assert 0.0 < unknown_share(tokenizers.src, ["the ☃"]) < 1.0
    assert unknown_share(tokenizers.src, [""]) == 0.0
    assert unseen_characters(["abc"], ["abd dd", "e"]) == [("d", 3), ("e", 1)]


@pytest.mark.parametrize("dry_run", [True, False])
def test_training_in_bf16_on_a_cpu_without_bf16_units_is_refused_before_anything_is_written(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dry_run: bool,
) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})
    args = [*_args(files, tmp_path / "run"), "--precision", "bf16", "--device", "cpu"]
    result = runner.invoke(app, args if dry_run else [*(arg for arg in args if arg != "--dry-run"), "--max-steps", "1"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("error: bf16 needs bf16 units and this CPU has none")
    assert not (tmp_path / "run").exists()


def test_the_dry_run_refuses_bf16_search_where_training_would(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both start the same way (`seq2seq.startup`): validation's bf16 search is checked before any work."""
    from seq2seq import devices, training
    from seq2seq.config import SearchConfig
    from seq2seq.errors import ConfigError

    monkeypatch.setattr(devices, "has_bf16_units", lambda device: False)
    data = DataConfig(source=str(files["source"]), target=str(files["target"]), valid_source=str(files["valid_source"]),
                      valid_target=str(files["valid_target"]))
    cfg = Config(data=data, tokenizer=TokenizerConfig(vocab_size=60), model=ModelConfig(emb_dim=8, hidden_dim=16),
                 search=SearchConfig(precision="bf16"))
    with pytest.raises(ConfigError, match="bf16 needs bf16 units"):
        preview_training(cfg)
    with pytest.raises(ConfigError, match="bf16 needs bf16 units"):
        training.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
