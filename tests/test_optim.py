"""Optimizers, learning-rate schedules and checkpoint averaging behave as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from seq2seq import checkpoint
from seq2seq.averaging import average
from seq2seq.config import Config, ModelConfig, TrainConfig
from seq2seq.errors import CheckpointError
from seq2seq.model import Seq2Seq
from seq2seq.optim import LearningRate, build_optimizer


def test_warmup_rises_linearly_then_holds() -> None:
    rate = LearningRate(TrainConfig(lr=1e-3, warmup_steps=100))
    assert rate.at(1) == pytest.approx(1e-5)
    assert rate.at(50) == pytest.approx(5e-4)
    assert rate.at(100) == rate.at(5000) == pytest.approx(1e-3)


def test_inverse_sqrt_decays_after_warmup() -> None:
    rate = LearningRate(TrainConfig(lr=1e-3, warmup_steps=100, schedule="inverse-sqrt", min_lr=1e-4))
    assert rate.at(100) == pytest.approx(1e-3)
    assert rate.at(400) == pytest.approx(5e-4)            # sqrt(100 / 400) = 1/2
    assert rate.at(1_000_000) == pytest.approx(1e-4)      # floored at min_lr


def test_plateau_cuts_the_rate_after_patience_validations_without_a_new_best() -> None:
    rate = LearningRate(TrainConfig(lr=1e-3, schedule="plateau", plateau_patience=2, plateau_factor=0.5))
    cuts = [rate.after_validation(bleu) for bleu in (10.0, 12.0, 11.0, 11.5, 13.0, 12.0, 12.0)]
    assert cuts == [False, False, False, True, False, False, True]
    assert rate.at(10) == pytest.approx(1e-3 / 4)


def test_a_constant_schedule_never_cuts_and_the_state_round_trips() -> None:
    rate = LearningRate(TrainConfig(schedule="constant", plateau_patience=1))
    assert not any(rate.after_validation(score) for score in (5.0, 4.0, 3.0))
    restored = LearningRate(TrainConfig(schedule="constant"))
    restored.load_state_dict(rate.state_dict())
    assert restored.state_dict() == rate.state_dict() == {"reductions": 0, "stalled": 2, "best": 5.0}


def test_apply_sets_every_parameter_group() -> None:
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = build_optimizer([param], TrainConfig(lr=0.5, warmup_steps=10))
    assert LearningRate(TrainConfig(lr=0.5, warmup_steps=10)).apply(optimizer, 5) == pytest.approx(0.25)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)


def test_adamw_decays_weights_and_adam_does_not() -> None:
    results = {}
    for name in ("adam", "adamw"):
        param = torch.nn.Parameter(torch.ones(3))
        optimizer = build_optimizer([param], TrainConfig(optimizer=name, lr=0.1, weight_decay=0.5))
        param.grad = torch.zeros(3)
        optimizer.step()
        results[name] = param.detach().clone()
    assert torch.equal(results["adam"], torch.ones(3))
    torch.testing.assert_close(results["adamw"], torch.full((3,), 1 - 0.1 * 0.5))


def _saved(folder: Path, name: str, seed: int, tokenizers, *, hidden: int = 8) -> Path:
    torch.manual_seed(seed)
    config = Config(model=ModelConfig(emb_dim=8, hidden_dim=hidden))
    model = Seq2Seq.from_config(config.model, tokenizers.src.vocab_size, tokenizers.tgt.vocab_size)
    checkpoint.save(folder / name, config=config, tokenizers=tokenizers, model=model, step=seed)
    return folder / name


def test_averaging_gives_the_mean_of_the_weights(tmp_path: Path, tokenizers) -> None:
    paths = [_saved(tmp_path, f"{seed}.pt", seed, tokenizers) for seed in (1, 2, 3)]
    merged = average(paths)
    weights = [checkpoint.load(path).model.state_dict() for path in paths]
    for name, value in merged.model.state_dict().items():
        torch.testing.assert_close(value, sum(w[name] for w in weights) / 3)
    assert merged.step == 3 and merged.info["averaged_steps"] == [1, 2, 3]


def test_averaging_refuses_checkpoints_of_different_models(tmp_path: Path, tokenizers) -> None:
    small = _saved(tmp_path, "small.pt", 1, tokenizers)
    large = _saved(tmp_path, "large.pt", 2, tokenizers, hidden=12)
    with pytest.raises(CheckpointError, match="model settings differ"):
        average([small, large])


def test_average_command_writes_a_model_that_loads(tmp_path: Path, tokenizers) -> None:
    paths = [str(_saved(tmp_path, f"{seed}.pt", seed, tokenizers)) for seed in (2, 1)]  # as a glob lists step-10000 first
    result = CliRunner().invoke(app, ["average", *paths, "-o", str(tmp_path / "avg.pt")])
    assert result.exit_code == 0, result.output
    assert checkpoint.load(tmp_path / "avg.pt").info["averaged"] == paths
    assert "averaged 2 checkpoints (steps 1, 2) into" in result.stderr
