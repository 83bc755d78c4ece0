"""Gradient accumulation (train.accumulate): N micro-batches make the update of their whole batch, the loss divided by
the target tokens of the whole update; a step is an update, and a run stops and resumes only between updates.
The comparisons with a batch of N x B tokens in the loop, on one process and on two, are in tests/test_distributed.py."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from seq2seq import checkpoint, training
from seq2seq.config import Config, ModelConfig, SearchConfig, TokenizerConfig, TrainConfig
from seq2seq.data import Example, collate
from seq2seq.distributed import ALONE
from seq2seq.errors import ConfigError
from seq2seq.model import Seq2Seq
from seq2seq.optim import build_optimizer
from seq2seq.tokenizer import EOS_ID

# Targets of 5, 1, 2 and 4 pieces: the two micro-batches (every other pair) hold 6 + 3 = 9 and 2 + 5 = 7 target
# tokens with EOS, so a loss divided by each micro-batch's own tokens weighs their tokens unequally.
PAIRS = [Example([5, 6, 7, 8, EOS_ID], [9, 10, 11, 12, 13]), Example([14, 15, EOS_ID], [16]),
         Example([4, 17, EOS_ID], [18, 19]), Example([6, 9, 12, EOS_ID], [7, 8, 10, 11])]
# The micro-batches sum their losses and gradients in another order than the whole batch does. Measured over 16
# seeds of these weights, the worst differences were 2.1e-7 (loss, relative), 1.7e-6 (gradient norm, relative),
# 2.8e-7 (gradients) and 7.7e-7 (weights after 3 Adam steps; absolute). The bounds are about 10 times those; a loss
# divided by each micro-batch's own tokens is off by percents.
RELATIVE = 2e-5   # loss and gradient norm
ABSOLUTE = 1e-5   # gradients and weights


def tiny_model() -> Seq2Seq:
    """No dropout, so that the two ways of updating compute the same function; wide weights, far from uniform outputs."""
    torch.manual_seed(0)
    model = Seq2Seq(20, 20, ModelConfig(emb_dim=8, hidden_dim=16, embedding_dropout=0.0, layer_dropout=0.0,
                                        output_dropout=0.0))
    with torch.no_grad():
        for param in model.parameters():
            param.uniform_(-1.0, 1.0)
    return model.train()


def three_updates(accumulate: int) -> tuple[list[tuple[float, float]], list[torch.Tensor], Seq2Seq]:
    """Three updates on PAIRS, whole or in `accumulate` micro-batches: (loss, gradient norm) of each, the last
    gradients, and the model after them."""
    model, settings = copy.deepcopy(tiny_model()), TrainConfig(accumulate=accumulate, clip_norm=0.0)
    optimizer = build_optimizer(model.parameters(), settings)
    results = []
    for _ in range(3):
        micro_batches, tokens = training.split(PAIRS, settings, ALONE)
        loss, grad_norm, finite = training.update(model, optimizer, micro_batches, settings, tokens=tokens)
        assert finite
        results.append((loss, grad_norm))
    return results, [param.grad.clone() for param in model.parameters()], model


def test_micro_batches_update_as_their_whole_batch() -> None:
    micro_batches, tokens = training.split(PAIRS, TrainConfig(accumulate=2), ALONE)
    assert [micro.batch.tgt_tokens for micro in micro_batches] == [9, 7] and tokens == 16 == collate(PAIRS).tgt_tokens

    (whole, whole_gradients, whole_model), (accumulated, gradients, model) = three_updates(1), three_updates(2)

    for (loss, norm), (wanted_loss, wanted_norm) in zip(accumulated, whole, strict=True):
        assert loss == pytest.approx(wanted_loss, rel=RELATIVE) and norm == pytest.approx(wanted_norm, rel=RELATIVE)
    for gradient, wanted in zip(gradients, whole_gradients, strict=True):
        torch.testing.assert_close(gradient, wanted, rtol=0, atol=ABSOLUTE)
    for param, wanted in zip(model.parameters(), whole_model.parameters(), strict=True):
        torch.testing.assert_close(param.detach(), wanted.detach(), rtol=0, atol=ABSOLUTE)


def test_a_batch_of_fewer_pairs_than_micro_batches_trains_stand_ins_at_weight_0() -> None:
    micro_batches, tokens = training.split(PAIRS[:1], TrainConfig(accumulate=3), ALONE)
    assert [micro.stand_in for micro in micro_batches] == [False, True, True] and tokens == 6

    model, settings = tiny_model(), TrainConfig(clip_norm=0.0)
    alone = copy.deepcopy(model)
    loss, norm, _ = training.update(model, build_optimizer(model.parameters(), settings), micro_batches, settings, tokens=tokens)
    wanted_loss, wanted_norm, _ = training.update(alone, build_optimizer(alone.parameters(), settings), collate(PAIRS[:1]), settings)

    assert loss == pytest.approx(wanted_loss, rel=RELATIVE) and norm == pytest.approx(wanted_norm, rel=RELATIVE)


# --- in the training loop -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, make_data_config) -> Config:
    """Dropout on: the micro-batches draw their masks in turn, and a resume must draw the same ones."""
    data = make_data_config(tmp_path_factory.mktemp("data"), train=120, valid=6, seed=90, valid_words=3)
    return Config(
        data=data, tokenizer=TokenizerConfig(vocab_size=50), model=ModelConfig(emb_dim=8, hidden_dim=16),
        train=TrainConfig(lr=0.01, batch_tokens=100, accumulate=2, max_steps=6, valid_every=3, log_every=1, threads=1),
        search=SearchConfig(batch_size=6, max_length_constant=3),
    ).validate()


def with_train(config: Config, **changes) -> Config:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


def test_a_step_is_an_update_of_all_its_micro_batches(config: Config, tmp_path: Path) -> None:
    events: list = []
    training.train(config, tmp_path / "accumulated", report=events.append)
    whole: list = []
    training.train(with_train(config, accumulate=1, batch_tokens=200), tmp_path / "whole", report=whole.append)

    ready, ready_whole = (next(e for e in run if isinstance(e, training.DataReady)) for run in (events, whole))
    assert ready.batches_per_epoch == ready_whole.batches_per_epoch, "an epoch has as many updates as batches of 2B"
    assert [e.step for e in events if isinstance(e, training.StepsDone)] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events if isinstance(e, training.Validated)] == [3, 6]
    last = checkpoint.load(tmp_path / "accumulated" / "last.pt")
    assert last.training["loop"]["position"] == 6 and last.config.train.accumulate == 2


def test_a_run_stops_between_updates_and_resumes_bitwise(config: Config, tmp_path: Path) -> None:
    straight, run = tmp_path / "straight", tmp_path / "run"
    training.train(config, straight)
    calls = iter(range(1, 100))
    stopped = training.train(config, run, should_stop=lambda: "interrupted" if next(calls) >= 2 else None)
    loop = checkpoint.load(run / "last.pt").training["loop"]
    assert (stopped.step, loop["step"], loop["position"]) == (2, 2, 2), "stopped after the second whole update"

    training.train(config, run, resume=True)

    one, two = checkpoint.load(run / "last.pt"), checkpoint.load(straight / "last.pt")
    assert one.step == two.step == 6
    assert all(torch.equal(value, two.model.state_dict()[name]) for name, value in one.model.state_dict().items())
    assert torch.equal(one.training["rng"], two.training["rng"])

    with pytest.raises(ConfigError, match="train.accumulate is 1 but the run was trained with 2"):
        training.train(with_train(config, accumulate=1, max_steps=8), run, resume=True)
