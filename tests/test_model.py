"""The model's three verbs agree: teacher forcing equals stepping, and padding never leaks into a sentence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seq2seq.config import ModelConfig
from seq2seq.data import pad
from seq2seq.model import DecoderState, Memory, Seq2Seq
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID

VARIANTS = [
    pytest.param(cell, attention, layers, feeding, id=f"{cell}-{attention}-{layers}layer-{'feed' if feeding else 'nofeed'}")
    for cell in ("lstm", "gru", "rnn")
    for attention in ("bahdanau", "luong-dot", "luong-general", "none")
    for layers in (1, 2)
    for feeding in (True, False)
    if cell == "lstm" or (attention, feeding) in (("bahdanau", True), ("none", False))
]


def random_batch(batch: int, *, vocab: int, seed: int, max_len: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """src (with EOS, right-padded), src_lens and tgt_in (BOS + y, right-padded), of varied lengths."""
    rng = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len, (2, batch), generator=rng).tolist()
    src = [torch.randint(4, vocab, (n,), generator=rng).tolist() + [EOS_ID] for n in lengths[0]]
    tgt = [[BOS_ID] + torch.randint(4, vocab, (n,), generator=rng).tolist() for n in lengths[1]]
    src_padded, src_lens = pad(src)
    return src_padded, src_lens, pad(tgt)[0]


@pytest.mark.parametrize(("cell", "attention", "layers", "input_feeding"), VARIANTS)
def test_teacher_forcing_equals_step_by_step_decoding(make_model, cell: str, attention: str, layers: int, input_feeding: bool) -> None:
    model = make_model(src_vocab=17, tgt_vocab=23, attention=attention, layers=layers, input_feeding=input_feeding,
                       scale=0.5, cell=cell)
    src, src_lens, tgt_in = random_batch(4, vocab=17, seed=1)

    with torch.no_grad():
        forced = F.log_softmax(model(src, src_lens, tgt_in), dim=-1)  # (batch, tgt_len, vocab)
        memory, state = model.encode(src, src_lens)
        stepped = []
        for t in range(tgt_in.size(1)):
            log_probs, state = model.decode_step(tgt_in[:, t], state, memory)
            stepped.append(log_probs)

    torch.testing.assert_close(torch.stack(stepped, dim=1), forced, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("cell", "attention", "layers", "input_feeding"), VARIANTS)
def test_padding_one_sentence_does_not_change_it(make_model, cell: str, attention: str, layers: int, input_feeding: bool) -> None:
    model = make_model(attention=attention, layers=layers, input_feeding=input_feeding, scale=0.5, cell=cell)
    short_src, short_tgt = [5, 6, 7, EOS_ID], [BOS_ID, 8, 9]
    long_src, long_tgt = [9, 8, 7, 6, 5, 4, 11, 12, 13, EOS_ID], [BOS_ID, 4, 5, 6, 7, 8, 9]

    with torch.no_grad():
        alone_memory, alone_state = model.encode(torch.tensor([short_src]), torch.tensor([len(short_src)]))
        alone_logits = model(torch.tensor([short_src]), torch.tensor([len(short_src)]), torch.tensor([short_tgt]))
        src, src_lens = pad([short_src, long_src])
        tgt_in, _ = pad([short_tgt, long_tgt])
        batch_memory, batch_state = model.encode(src, src_lens)
        batch_logits = model(src, src_lens, tgt_in)

    n = len(short_src)
    torch.testing.assert_close(batch_memory.values[0, :n], alone_memory.values[0], rtol=0, atol=1e-6)
    assert batch_memory.values[0, n:].abs().max() == 0, "padded positions carry no encoder output"
    assert batch_memory.mask[0].tolist() == [True] * n + [False] * (src.size(1) - n)
    for batch_field, alone_field in zip(batch_state, alone_state):
        torch.testing.assert_close(batch_field[0], alone_field[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(batch_logits[0, : len(short_tgt)], alone_logits[0], rtol=0, atol=1e-5)


def test_the_first_sentence_of_a_batch_does_not_change_the_second(make_model) -> None:
    model = make_model(scale=0.5)
    src, src_lens, tgt_in = random_batch(2, vocab=20, seed=3)
    other_src = src.clone()
    other_src[0, : src_lens[0] - 1] = 4  # a different first sentence of the same length

    with torch.no_grad():
        logits, other_logits = model(src, src_lens, tgt_in), model(other_src, src_lens, tgt_in)

    assert not torch.allclose(logits[0], other_logits[0])
    torch.testing.assert_close(logits[1], other_logits[1], rtol=0, atol=1e-6)


def test_logits_at_chosen_positions_are_those_of_the_whole_pass(make_model) -> None:
    model = make_model(scale=0.5)
    src, src_lens, tgt_in = random_batch(4, vocab=20, seed=5)
    positions = tgt_in != PAD_ID  # what training asks for: the real target tokens

    with torch.no_grad():
        everywhere, chosen = model(src, src_lens, tgt_in), model(src, src_lens, tgt_in, positions)

    assert not positions.all(), "the batch should hold padding for this test to mean anything"
    assert chosen.shape == (int(positions.sum()), everywhere.size(-1))
    torch.testing.assert_close(chosen, everywhere[positions], rtol=0, atol=1e-6)


@pytest.mark.parametrize("layers", [1, 2])
def test_shapes(make_model, layers: int) -> None:
    batch, hidden, src_vocab, tgt_vocab = 3, 32, 11, 13
    model = make_model(src_vocab=src_vocab, tgt_vocab=tgt_vocab, layers=layers, hidden_dim=hidden)
    src, src_lens, tgt_in = random_batch(batch, vocab=src_vocab, seed=4)

    memory, state = model.encode(src, src_lens)
    assert isinstance(memory, Memory) and isinstance(state, DecoderState)
    assert memory.values.shape == (batch, src.size(1), hidden)
    assert memory.keys.shape[:2] == (batch, src.size(1))
    assert memory.mask.tolist() == (src != PAD_ID).tolist()
    assert state.h.shape == state.c.shape == (batch, layers, hidden)
    assert state.feed.shape == (batch, hidden)

    log_probs, next_state = model.decode_step(tgt_in[:, 0], state, memory)
    assert log_probs.shape == (batch, tgt_vocab)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(batch))
    assert [field.shape for field in next_state] == [field.shape for field in state]

    assert model(src, src_lens, tgt_in).shape == (batch, tgt_in.size(1), tgt_vocab)


def test_from_config_reads_the_model_sizes() -> None:
    cfg = ModelConfig(emb_dim=8, hidden_dim=12, layers=2, attention="luong-dot", input_feeding=False, layer_dropout=0.0)
    model = Seq2Seq.from_config(cfg, 30, 40)
    assert model.src_embed.weight.shape == (30, 8)
    assert model.tgt_embed.weight.shape == (40, 8)
    assert model.out.out_features == 40
    assert len(model.cells) == 2
    assert model.encoder.hidden_size == 6 and model.encoder.bidirectional


def test_eval_mode_is_deterministic_and_train_mode_applies_dropout(make_model) -> None:
    model = make_model()
    src, src_lens, tgt_in = random_batch(2, vocab=20, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(model(src, src_lens, tgt_in), model(src, src_lens, tgt_in), rtol=0, atol=0)
        model.train()
        assert not torch.equal(model(src, src_lens, tgt_in), model(src, src_lens, tgt_in))
