"""The weights' moving average (train.ema_decay): training itself is unchanged, the checkpoints hold the average of
the trained weights (and validation measures it), last.pt keeps both, and a resumed run equals an uninterrupted one
bitwise."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from cli.main import app
from seq2seq import checkpoint, startup, training
from seq2seq.config import Config, ModelConfig, SearchConfig, TokenizerConfig, TrainConfig, to_toml
from seq2seq.data import collate
from seq2seq.distributed import ALONE
from seq2seq.ema import WeightAverage
from seq2seq.tokenizer import PAD_ID

STEPS, DECAY = 6, 0.6


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, make_data_config) -> Config:
    """Dropout on (the RNG must survive the swaps), updates every step validated and saved."""
    data = make_data_config(tmp_path_factory.mktemp("data"), train=80, valid=6, seed=70, valid_words=3)
    return Config(
        data=data, tokenizer=TokenizerConfig(vocab_size=50), model=ModelConfig(emb_dim=8, hidden_dim=16),
        train=TrainConfig(lr=0.02, batch_tokens=150, max_steps=STEPS, valid_every=1, log_every=1, threads=1,
                          ema_decay=DECAY),
        search=SearchConfig(batch_size=6, max_length_constant=3),
    ).validate()


def with_train(config: Config, **changes) -> Config:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path).model.state_dict()


@pytest.fixture(scope="module")
def plain(config: Config, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, torch.Tensor]]]:
    """The same run without an average, and its trained weights after each update (last.pt, saved every step)."""
    out, trained = tmp_path_factory.mktemp("plain"), []
    report = lambda event: trained.append(weights(out / "last.pt")) if isinstance(event, training.Validated) else None
    training.train(with_train(config, ema_decay=0.0), out, report=report)
    return out, trained


@pytest.fixture(scope="module")
def averaged(config: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("averaged")
    training.train(config, out)
    return out


def test_the_average_follows_its_formula() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average = WeightAverage(model, decay=0.9)
    expected = 1.0
    for update, value in enumerate([3.0, -2.0, 5.0], start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        average.update()
        decay = min(0.9, (1 + update) / (10 + update))  # 0.18, 0.25, 0.31: the warm-up of the decay
        expected = decay * expected + (1 - decay) * value
    with average.swapped_in() as trained:
        assert model.weight.flatten().tolist() == pytest.approx([expected, expected], rel=1e-6)
        assert trained["weight"].tolist() == [[5.0, 5.0]]
    assert model.weight.tolist() == [[5.0, 5.0]], "the trained weights come back"


def test_training_is_unchanged_and_last_pt_keeps_the_trained_weights(averaged: Path, plain) -> None:
    out, trained = plain
    kept = checkpoint.load(averaged / "last.pt").training["ema"]
    assert kept["updates"] == STEPS
    assert all(torch.equal(kept["trained"][name], value) for name, value in weights(out / "last.pt").items())
    assert metrics(averaged, "step") == metrics(out, "step") and len(trained) == STEPS


def test_the_checkpoints_hold_the_average_and_validation_measures_it(config: Config, averaged: Path, plain) -> None:
    _, trained = plain
    begun = startup.start_run(with_train(config, ema_decay=0.0), None, ALONE)  # the weights before the first update
    expected = {name: value.clone() for name, value in begun.model.state_dict().items()}
    for update, after in enumerate(trained, start=1):
        decay = min(DECAY, (1 + update) / (10 + update))
        expected = {name: decay * value + (1 - decay) * after[name] for name, value in expected.items()}

    saved = weights(averaged / "last.pt")
    assert all(torch.allclose(saved[name], value, rtol=0, atol=1e-6) for name, value in expected.items())
    assert max(float((saved[name] - value).abs().max()) for name, value in trained[-1].items()) > 1e-3, \
        "the average is not the trained weights"
    best = checkpoint.load(averaged / "best.pt")
    (row,) = [row for row in metrics(averaged) if row["step"] == best.step]
    assert validation_loss(best, begun) == pytest.approx(row["valid_loss"], rel=1e-6)


def test_a_resumed_run_with_an_average_equals_the_uninterrupted_one(config: Config, averaged: Path, tmp_path: Path) -> None:
    calls = iter(range(1, 100))
    stopped = training.train(with_train(config, valid_every=4), tmp_path, should_stop=lambda: "terminated" if next(calls) >= 2 else None)
    assert stopped.step == 2  # between two saves of the uninterrupted run: only the stop saved here

    training.train(with_train(config, valid_every=4), tmp_path, resume=True)

    one, two = checkpoint.load(tmp_path / "last.pt"), checkpoint.load(averaged / "last.pt")
    assert one.step == two.step == STEPS
    assert all(torch.equal(value, two.model.state_dict()[name]) for name, value in one.model.state_dict().items())
    trained = one.training["ema"]["trained"], two.training["ema"]["trained"]
    assert all(torch.equal(value, trained[1][name]) for name, value in trained[0].items())
    assert torch.equal(one.training["rng"], two.training["rng"])


def test_the_log_says_validation_uses_the_average(config: Config, tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(to_toml(with_train(config, max_steps=2, valid_every=2)), encoding="utf-8")

    result = CliRunner().invoke(app, ["train", "--config", str(recipe), "--output", str(tmp_path / "run")])
    info = CliRunner().invoke(app, ["info", str(tmp_path / "run" / "best.pt")])

    assert result.exit_code == 0, result.output
    assert f"validation and checkpoints use the moving average of the weights (train.ema_decay = {DECAY})" in result.stderr
    assert "validation at step 2 (averaged weights): loss" in result.stderr
    assert info.exit_code == 0 and f"moving average of the trained ones (train.ema_decay = {DECAY})" in info.stdout


def metrics(run: Path, key: str | None = None) -> list:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [row[key] for row in rows] if key else rows


def validation_loss(saved: checkpoint.Checkpoint, begun: startup.Start) -> float:
    """Cross-entropy per target token of the validation set, as validation computes it."""
    batch = collate(list(begun.valid_examples))
    real = batch.tgt_out != PAD_ID
    with torch.inference_mode():
        logits = saved.model(batch.src, batch.src_lens, batch.tgt_in, real)
    return float(F.cross_entropy(logits, batch.tgt_out[real], reduction="sum")) / int(real.sum())
