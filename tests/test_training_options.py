"""The loop honours the schedule, early-stopping and keep-best settings (train.warmup_steps, patience, keep_best)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from seq2seq import checkpoint, training
from seq2seq.config import Config, ModelConfig, SearchConfig, TokenizerConfig, TrainConfig


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, make_data_config) -> Config:
    data = make_data_config(tmp_path_factory.mktemp("data"), train=60, valid=6, seed=50, valid_words=3)
    return Config(data=data, tokenizer=TokenizerConfig(vocab_size=50), model=ModelConfig(emb_dim=8, hidden_dim=16),
                  train=TrainConfig(lr=0.02, batch_tokens=200, max_steps=6, valid_every=1, log_every=1, threads=1),
                  search=SearchConfig(batch_size=6, max_length_constant=3)).validate()


def with_train(config: Config, **changes) -> Config:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def test_warmup_sets_the_learning_rate_of_each_update(config: Config, tmp_path: Path) -> None:
    training.train(with_train(config, warmup_steps=4, max_steps=5), tmp_path)
    assert [row["lr"] for row in rows(tmp_path)] == pytest.approx([0.005, 0.01, 0.015, 0.02, 0.02])


def test_patience_stops_after_that_many_validations_without_a_new_best(config: Config, tmp_path: Path) -> None:
    # a learning rate too small to change any translation: the first validation stays the best
    finished = training.train(with_train(config, lr=1e-9, patience=2, max_steps=100), tmp_path)

    assert (finished.reason, finished.step) == ("patience", 3)
    assert [row["best"] for row in rows(tmp_path)] == [True, False, False]
    assert checkpoint.load(tmp_path / "last.pt").step == 3 and checkpoint.load(tmp_path / "best.pt").step == 1


def test_keep_best_keeps_a_checkpoint_for_each_of_the_n_best_validations(config: Config, tmp_path: Path) -> None:
    training.train(with_train(config, keep_best=2), tmp_path)

    ranked = sorted(rows(tmp_path), key=lambda row: (-row["valid_bleu"], row["step"]))
    assert sorted(path.name for path in tmp_path.glob("step-*.pt")) == sorted(f"step-{row['step']}.pt" for row in ranked[:2])
    assert all(checkpoint.load(path).step == int(path.stem[5:]) for path in tmp_path.glob("step-*.pt"))


def test_overwrite_removes_the_kept_checkpoints_of_the_old_run(config: Config, tmp_path: Path) -> None:
    training.train(with_train(config, keep_best=3), tmp_path)
    training.train(with_train(config, max_steps=1), tmp_path, overwrite=True)
    assert not list(tmp_path.glob("step-*.pt"))


def test_the_selected_metric_picks_best_pt_and_the_kept_checkpoints_in_its_direction(config: Config, tmp_path: Path) -> None:
    """By the validation loss (lower is better, and distinct at every step, unlike the tiny model's BLEU)."""
    events: list = []
    finished = training.train(with_train(config, select_metric="loss", valid_metrics="bleu,wer,exact", keep_best=2),
                              tmp_path, report=events.append)
    history = rows(tmp_path)
    by_loss = sorted(history, key=lambda row: row["valid_loss"])
    assert checkpoint.load(tmp_path / "best.pt").step == by_loss[0]["step"]
    assert sorted(int(path.stem[5:]) for path in tmp_path.glob("step-*.pt")) == sorted(row["step"] for row in by_loss[:2])
    assert [row["best"] for row in history] == [row["valid_loss"] == min(r["valid_loss"] for r in history[: i + 1])
                                                 for i, row in enumerate(history)]
    assert {"valid_bleu", "valid_wer", "valid_exact", "wer_signature"} <= history[-1].keys()
    assert finished.metric == "loss" and finished.best["loss"] == by_loss[0]["valid_loss"]
    info = checkpoint.load(tmp_path / "best.pt").info
    assert info["valid_wer"] == by_loss[0]["valid_wer"] and "unit:word" in info["wer_signature"]


def test_each_validation_writes_its_outputs_and_shows_three_examples(config: Config, tmp_path: Path) -> None:
    events: list = []
    training.train(with_train(config, max_steps=2), tmp_path, report=events.append)
    validated = [event for event in events if isinstance(event, training.Validated)]
    sources = Path(config.data.valid_source).read_text(encoding="utf-8").splitlines()
    references = Path(config.data.valid_target).read_text(encoding="utf-8").splitlines()
    outputs = (tmp_path / "last.valid.txt").read_text(encoding="utf-8").splitlines()
    assert len(outputs) == len(sources) == 6
    assert [(source, reference) for source, reference, _ in validated[-1].examples] == \
        [(sources[0], references[0]), (sources[2], references[2]), (sources[5], references[5])]
    assert [output for _, _, output in validated[-1].examples] == [outputs[0], outputs[2], outputs[5]]
    assert (tmp_path / "best.valid.txt").exists()


def test_validation_searches_at_train_valid_beam_as_translate_does(config: Config, tmp_path: Path) -> None:
    """best.pt is picked by the search users run: each validation's outputs are translate's at train.valid_beam."""
    from seq2seq.translator import load

    # a rate too small to train: the untrained outputs run to the length limit, where greedy and beam search part
    training.train(with_train(config, lr=1e-9, max_steps=1, valid_beam=4), tmp_path)
    sources = Path(config.data.valid_source).read_text(encoding="utf-8").splitlines()
    outputs = (tmp_path / "last.valid.txt").read_text(encoding="utf-8").splitlines()
    last = load(tmp_path / "last.pt", device="cpu")
    greedy = [best.text for best, *_ in last.translate(sources, beam_size=1)]
    assert outputs == [best.text for best, *_ in last.translate(sources, beam_size=4)]
    assert outputs != greedy, "a model whose greedy and beam outputs agree cannot tell the two searches apart"


def test_an_empty_validation_reference_is_refused_before_training_when_selecting_by_wer(
    config: Config, tmp_path: Path,
) -> None:
    from seq2seq.errors import DataError

    targets = Path(config.data.valid_target).read_text(encoding="utf-8").splitlines()
    holed = tmp_path / "valid.tgt"
    holed.write_text("\n".join([targets[0], "", *targets[2:]]) + "\n", encoding="utf-8")
    broken = dataclasses.replace(with_train(config, select_metric="wer"),
                                 data=dataclasses.replace(config.data, valid_target=str(holed)))
    with pytest.raises(DataError, match=r"valid.tgt:2: empty reference line"):
        training.train(broken, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_run_judged_by_exact_match_ends_by_naming_its_word_error_rate(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.training_progress import TrainingReporter
    from seq2seq.events import Finished

    best = {"loss": 0.61, "ppl": 1.84, "exact": 64.78, "wer": 8.52, "cer": 5.54}
    with TrainingReporter(TrainConfig(), quiet=False) as report:
        report(Finished(2226, "max_time", Path("run/best.pt"), Path("run/last.pt"), best, "exact", 480.0))
    line = capsys.readouterr().err.replace("\n", " ")
    assert "best validation by exact: loss 0.61, exact 64.78, WER 8.52, CER 5.54 " \
           "(word error rate 35.22%: lines not exactly right)" in line
