"""A tiny training run on a synthetic word-mapping task: its files, its learning, its reproducibility."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from seq2seq import checkpoint, runfolder, training
from seq2seq.config import Config, ModelConfig, SearchConfig, TokenizerConfig, TrainConfig, resolve
from seq2seq.errors import ConfigError, DataError

MAX_STEPS, VALID_EVERY, LOG_EVERY = 40, 20, 10


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, make_data_config) -> Config:
    """~200 training and 20 validation pairs of the word-mapping task (cat -> TAC), tiny model, 40 steps."""
    data = make_data_config(tmp_path_factory.mktemp("data"), train=200, valid=20, seed=10, valid_words=4, max_length=50)
    return Config(
        data=data,
        tokenizer=TokenizerConfig(vocab_size=60),
        model=ModelConfig(emb_dim=16, hidden_dim=32, layer_dropout=0.1),
        train=TrainConfig(lr=0.03, batch_tokens=400, max_steps=MAX_STEPS, valid_every=VALID_EVERY, log_every=LOG_EVERY),
        search=SearchConfig(batch_size=32, max_length_constant=5),
    ).validate()


@pytest.fixture(scope="module")
def run(config: Config, tmp_path_factory: pytest.TempPathFactory):
    """One run of the module's config; returns its folder and every event it reported."""
    out = tmp_path_factory.mktemp("run")
    events: list[training.Event] = []
    training.train(config, out, report=events.append)
    return out, events


def of_kind(events: list, kind: type) -> list:
    return [event for event in events if isinstance(event, kind)]


def test_a_run_writes_its_config_metrics_and_two_checkpoints(run, config: Config) -> None:
    out, _ = run
    assert sorted(p.name for p in out.iterdir()) == sorted(runfolder.RUN_FILES)
    assert resolve(out / "config.toml") == config, "config.toml is the run's whole config and reloads as it"


def test_the_start_is_reported_stage_by_stage_until_the_data_is_ready(run) -> None:
    _, events = run
    ready = next(i for i, event in enumerate(events) if isinstance(event, training.DataReady))
    stats = events[ready].train
    lines = stats.kept + stats.empty + stats.too_long
    assert events[:ready] == [training.Preparing("tokenizer", lines),
                              training.Preparing("encoding", lines), training.Preparing("planning", stats.kept)]
    assert not any(isinstance(event, training.Preparing) for event in events[ready:])


def test_metrics_hold_one_json_line_per_validation(run) -> None:
    out, events = run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]

    assert [row["step"] for row in rows] == list(range(VALID_EVERY, MAX_STEPS + 1, VALID_EVERY))
    assert [row["step"] for row in rows] == [event.step for event in of_kind(events, training.Validated)]
    for row, event in zip(rows, of_kind(events, training.Validated)):
        assert row["valid_loss"] == pytest.approx(event.loss)
        assert row["valid_bleu"] == pytest.approx(event.scores["bleu"])
        assert row["best"] == event.is_best


def test_last_and_best_checkpoints_hold_the_right_steps(run, config: Config) -> None:
    out, events = run
    validations = of_kind(events, training.Validated)
    best_step = max(validations, key=lambda v: (v.scores["bleu"], -v.step)).step  # the first to reach the best BLEU

    last, best = checkpoint.load(out / "last.pt"), checkpoint.load(out / "best.pt")

    assert last.step == MAX_STEPS
    assert best.step == best_step
    assert last.config == best.config == config
    assert last.info["valid_loss"] == pytest.approx(validations[-1].loss)


def test_the_run_reports_data_progress_and_the_end(run) -> None:
    _, events = run
    (ready,) = of_kind(events, training.DataReady)
    assert ready.train.kept == 200 and ready.valid_pairs == 20
    assert [e.step for e in of_kind(events, training.StepsDone)] == list(range(LOG_EVERY, MAX_STEPS + 1, LOG_EVERY))
    (finished,) = of_kind(events, training.Finished)
    assert events[-1] is finished
    assert (finished.step, finished.reason) == (MAX_STEPS, "max_steps")


def test_training_loss_falls(run) -> None:
    _, events = run
    losses = [event.loss for event in of_kind(events, training.StepsDone)]
    assert all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert losses[-1] < losses[0] - 0.3, losses
    (ready,) = of_kind(events, training.DataReady)
    assert losses[-1] < math.log(ready.tgt_vocab) - 0.5, "well below guessing uniformly over the vocabulary"
    validations = of_kind(events, training.Validated)
    assert validations[-1].loss < validations[0].loss


def test_training_again_into_the_same_folder_needs_overwrite(run, config: Config) -> None:
    out, _ = run
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    with pytest.raises(ConfigError, match="already holds a run"):
        training.train(config, out)

    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "a refused run touches nothing"


def test_overwrite_replaces_the_previous_run(config: Config, tmp_path: Path) -> None:
    short = dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=2, valid_every=1, log_every=1))
    training.train(short, tmp_path)
    training.train(short, tmp_path, overwrite=True)

    rows = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(row)["step"] for row in rows] == [1, 2]


def test_the_same_seed_gives_identical_weights(run, config: Config, tmp_path: Path) -> None:
    first, _ = run
    training.train(config, tmp_path)

    one, two = checkpoint.load(first / "last.pt"), checkpoint.load(tmp_path / "last.pt")
    assert one.tokenizers.src.model_proto == two.tokenizers.src.model_proto
    weights_one, weights_two = one.model.state_dict(), two.model.state_dict()
    assert all(torch.equal(weights_one[name], weights_two[name]) for name in weights_one)

    def results(folder: Path) -> list[dict]:  # metrics without the wall-clock time
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        return [{key: value for key, value in row.items() if key != "elapsed_s"} for row in rows]

    assert results(first) == results(tmp_path)


def test_a_different_seed_gives_different_weights(config: Config, tmp_path: Path) -> None:
    other = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=2, max_steps=1, valid_every=1))
    training.train(other, tmp_path)
    reference = dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=1, valid_every=1))
    training.train(reference, tmp_path / "reference")

    one = checkpoint.load(tmp_path / "reference" / "last.pt").model.state_dict()
    two = checkpoint.load(tmp_path / "last.pt").model.state_dict()
    assert not all(torch.equal(one[name], two[name]) for name in one)


def test_training_without_data_files_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.source"):
        training.train(Config(), tmp_path)
    assert list(tmp_path.iterdir()) == [], "nothing is written before the config is known to be usable"


def test_training_without_a_usable_pair_is_a_data_error(config: Config, tmp_path: Path) -> None:
    source = Path(config.data.source).read_text(encoding="utf-8").splitlines()
    empty_targets = write_lines(tmp_path / "empty.tgt", [""] * len(source))
    unusable = dataclasses.replace(config, data=dataclasses.replace(config.data, target=empty_targets))
    with pytest.raises(DataError, match=r"no usable training pairs \(200 empty"):
        training.train(unusable, tmp_path / "run")
