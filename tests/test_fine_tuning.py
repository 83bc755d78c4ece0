"""Fine-tuning (train.init_from, `--init-from`): a new run from a model file's weights and tokenizers, with a new
optimizer, schedule and step count, that keeps the model's architecture and vocabulary, records where it started,
and resumes exactly without reading the model file again."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from seq2seq import checkpoint, startup, training
from seq2seq.config import Config, DataConfig, ModelConfig, SearchConfig, TokenizerConfig, TrainConfig, to_toml

runner = CliRunner()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, make_data_config) -> Config:
    data = make_data_config(tmp_path_factory.mktemp("data"), train=100, valid=6, seed=40, valid_words=3)
    return Config(
        data=data, tokenizer=TokenizerConfig(vocab_size=50), model=ModelConfig(emb_dim=8, hidden_dim=16),
        train=TrainConfig(lr=0.02, batch_tokens=200, max_steps=6, valid_every=3, log_every=1, threads=1),
        search=SearchConfig(batch_size=6, max_length_constant=3),
    ).validate()


@pytest.fixture(scope="module")
def base(config: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model to adapt: best.pt of a short run."""
    out = tmp_path_factory.mktemp("base")
    training.train(dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=15, valid_every=5)), out)
    return out / "best.pt"


@pytest.fixture(scope="module")
def new_data(config: Config, tmp_path_factory: pytest.TempPathFactory, make_data_config) -> DataConfig:
    """Other training pairs (the new domain); the same validation pairs, so that scores compare with the base's."""
    other = make_data_config(tmp_path_factory.mktemp("new"), train=60, valid=6, seed=41, valid_words=3)
    return dataclasses.replace(other, valid_source=config.data.valid_source, valid_target=config.data.valid_target)


def fine_tuning(config: Config, base: Path, data: DataConfig, **train) -> Config:
    return dataclasses.replace(config, data=data,
                               train=dataclasses.replace(config.train, init_from=str(base), **train))


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def test_a_fine_tune_without_updates_saves_the_base_weights_and_vocabulary(
    config: Config, base: Path, new_data: DataConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_tokenizer_training(*args, **kwargs):
        raise AssertionError("a fine-tuned run takes the model file's tokenizers")

    monkeypatch.setattr(startup, "train_tokenizers", no_tokenizer_training)
    monkeypatch.setattr(training, "update", lambda *args, **kwargs: (1.0, 0.0, True))  # steps that change nothing

    training.train(fine_tuning(config, base, new_data, max_steps=2, valid_every=2), tmp_path)

    before, after = checkpoint.load(base), checkpoint.load(tmp_path / "best.pt")
    assert all(torch.equal(value, after.model.state_dict()[name]) for name, value in before.model.state_dict().items())
    assert (after.tokenizers.src.model_proto, after.tokenizers.tgt.model_proto) == \
        (before.tokenizers.src.model_proto, before.tokenizers.tgt.model_proto)
    assert after.step == 2, "a step count of its own"
    assert after.config.train.init_from == str(base) and after.config.model == before.config.model
    (row,) = rows(tmp_path)
    assert (row["valid_loss"], row["valid_bleu"]) == (before.info["valid_loss"], before.info["valid_bleu"])
    assert after.info["started_from"] == {"file": str(base.resolve()), "step": before.step, "metric": "bleu",
                                          "score": before.info["valid_bleu"]}


def test_fine_tuning_goes_on_from_the_base_with_a_new_optimizer_and_schedule(
    config: Config, base: Path, new_data: DataConfig, tmp_path: Path
) -> None:
    tuned, scratch = [], []
    training.train(fine_tuning(config, base, new_data, max_steps=3, warmup_steps=2, schedule="inverse-sqrt", valid_every=3),
                   tmp_path / "tuned", report=tuned.append)
    training.train(dataclasses.replace(config, data=new_data), tmp_path / "scratch", report=scratch.append)

    first = [next(event for event in events if isinstance(event, training.StepsDone)) for events in (tuned, scratch)]
    assert first[0].loss < first[1].loss - 0.3, "the first update starts from the trained model"
    last = checkpoint.load(tmp_path / "tuned" / "last.pt")
    assert {int(state["step"]) for state in last.training["optimizer"]["state"].values()} == {3}, "Adam's own count"
    assert rows(tmp_path / "tuned")[0]["lr"] == pytest.approx(config.train.lr * (2 / 3) ** 0.5), "the schedule's step 3"
    assert last.training["loop"]["step"] == 3 and last.training["loop"]["best_score"] == rows(tmp_path / "tuned")[0]["valid_bleu"]


@pytest.fixture(scope="module")
def recipe(config: Config, new_data: DataConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fine-tuning recipe as a user would write it: data and training settings, no tokenizer or model section."""
    path = tmp_path_factory.mktemp("recipe") / "tune.toml"
    text = to_toml(dataclasses.replace(config, data=new_data))
    path.write_text(text[: text.index("[tokenizer]")] + text[text.index("[train]"):], encoding="utf-8")
    return path


def test_the_model_settings_come_from_the_file(recipe: Path, base: Path) -> None:
    result = runner.invoke(app, ["train", "--config", str(recipe), "--init-from", str(base), "--print-config"])
    assert result.exit_code == 0, result.output
    assert "hidden_dim = 16" in result.stdout and "vocab_size = 50" in result.stdout, "the file's, not the defaults"
    assert f'init_from = "{base}"' in result.stdout


@pytest.mark.parametrize(
    ("change", "allowed"),
    [(["--hidden-dim", "32"], "model.hidden_dim is 32 but"), (["--set", "tokenizer.vocab_size=80"], "tokenizer.vocab_size is 80"),
     (["--set", "model.attention=luong-dot"], "model.attention is 'luong-dot'"),
     (["--set", "model.output_dropout=0.1", "--set", "train.lr=0.001", "--set", "tokenizer.sampling_alpha=0.1"], None)],
    ids=["hidden-dim", "vocabulary", "attention", "dropout-and-training"],
)
def test_a_change_of_architecture_is_refused_in_one_line(recipe: Path, base: Path, tmp_path: Path, change, allowed) -> None:
    result = runner.invoke(app, ["train", "--config", str(recipe), "--init-from", str(base), "--output", str(tmp_path / "run"),
                                 "--dry-run", "-q", *change])
    if allowed is None:
        assert result.exit_code == 0, result.output
        assert f"a new run from {base}'s weights" in result.stdout
        return
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1
    assert allowed in result.stderr and f"{base} was trained with" in result.stderr and "keeps its architecture" in result.stderr


def test_a_fine_tuned_run_resumes_exactly_without_its_model_file(recipe: Path, base: Path, tmp_path: Path) -> None:
    moved = Path(shutil.copy(base, tmp_path / "base.pt"))
    command = ["train", "--config", str(recipe), "--init-from", str(moved), "-q", "--max-steps"]
    straight = runner.invoke(app, [*command, "4", "--output", str(tmp_path / "straight")])
    stopped = runner.invoke(app, [*command, "2", "--output", str(tmp_path / "run")])
    assert straight.exit_code == stopped.exit_code == 0, straight.output + stopped.output
    moved.unlink()  # a resumed run reads its own last.pt only

    resumed = runner.invoke(app, [*command, "4", "--output", str(tmp_path / "run"), "--resume"])  # the same command

    assert resumed.exit_code == 0, resumed.output
    one, two = checkpoint.load(tmp_path / "run" / "last.pt"), checkpoint.load(tmp_path / "straight" / "last.pt")
    assert one.step == two.step == 4
    assert all(torch.equal(value, two.model.state_dict()[name]) for name, value in one.model.state_dict().items())
    assert one.info["started_from"]["file"] == str(moved)
    other = runner.invoke(app, ["train", "--output", str(tmp_path / "run"), "--resume", "--init-from", str(base),
                                "--max-steps", "6"])
    assert other.exit_code == 2 and other.stderr.count("\n") == 1 and f"train.init_from is '{base}'" in other.stderr

    info = runner.invoke(app, ["info", str(tmp_path / "run" / "best.pt")])
    assert info.exit_code == 0, info.output
    assert any(line.startswith("fine-tuned from") and f"{moved} (step " in line for line in info.stdout.splitlines())
