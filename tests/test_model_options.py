"""Each model option does what its name says: cells compute their textbook equations, options change what they claim."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seq2seq.config import ModelConfig
from seq2seq.data import pad
from seq2seq.model import RecurrentCell, Seq2Seq
from seq2seq.tokenizer import BOS_ID, EOS_ID

HIDDEN, INPUT, BATCH = 5, 3, 4


def _cell(kind: str) -> RecurrentCell:
    torch.manual_seed(0)
    cell = RecurrentCell(kind, INPUT, HIDDEN).double()
    with torch.no_grad():
        for param in cell.parameters():
            param.uniform_(-1, 1)
    return cell


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return (torch.randn(BATCH, INPUT, dtype=torch.double), torch.randn(BATCH, HIDDEN, dtype=torch.double),
            torch.randn(BATCH, HIDDEN, dtype=torch.double))


def test_lstm_cell_computes_the_classic_gate_equations() -> None:
    cell = _cell("lstm")
    x, h_prev, c_prev = _inputs()
    W_x, b_x, W_h = cell.input_map.weight, cell.input_map.bias, cell.hidden_map.weight
    W_i, W_f, W_c, W_o = W_x.split(HIDDEN)
    U_i, U_f, U_c, U_o = W_h.split(HIDDEN)
    b_i, b_f, b_c, b_o = b_x.split(HIDDEN)

    f = torch.sigmoid(x @ W_f.T + h_prev @ U_f.T + b_f)        # forget gate
    i = torch.sigmoid(x @ W_i.T + h_prev @ U_i.T + b_i)        # input gate
    c_tilde = torch.tanh(x @ W_c.T + h_prev @ U_c.T + b_c)     # candidate cell state C~
    c = f * c_prev + i * c_tilde                               # C_t = f_t * C_{t-1} + i_t * C~_t
    o = torch.sigmoid(x @ W_o.T + h_prev @ U_o.T + b_o)        # output gate
    h = o * torch.tanh(c)                                      # h_t = o_t * tanh(C_t)

    with torch.no_grad():
        h_ours, c_ours = cell(cell.input_map(x), h_prev, c_prev)
    torch.testing.assert_close(c_ours, c, rtol=0, atol=1e-6)
    torch.testing.assert_close(h_ours, h, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("kind", "reference"), [("lstm", nn.LSTMCell), ("gru", nn.GRUCell), ("rnn", nn.RNNCell)])
def test_each_cell_equals_torchs_cell_with_the_same_weights(kind: str, reference: type[nn.Module]) -> None:
    ours = _cell(kind)
    theirs = reference(INPUT, HIDDEN).double()
    with torch.no_grad():
        theirs.weight_ih.copy_(ours.input_map.weight)
        theirs.bias_ih.copy_(ours.input_map.bias)
        theirs.weight_hh.copy_(ours.hidden_map.weight)
        theirs.bias_hh.copy_(ours.hidden_map.bias if ours.hidden_map.bias is not None else torch.zeros_like(theirs.bias_hh))
        x, h_prev, c_prev = _inputs()
        h_ours, c_ours = ours(ours.input_map(x), h_prev, c_prev if kind == "lstm" else h_prev[:, :0])
        expected = theirs(x, (h_prev, c_prev)) if kind == "lstm" else (theirs(x, h_prev), None)
    torch.testing.assert_close(h_ours, expected[0], rtol=0, atol=1e-6)
    if kind == "lstm":
        torch.testing.assert_close(c_ours, expected[1], rtol=0, atol=1e-6)


def _model(**settings) -> Seq2Seq:
    torch.manual_seed(0)
    return Seq2Seq(20, 24, ModelConfig(emb_dim=8, hidden_dim=12, **settings)).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    src, src_lens = pad([[5, 6, 7, EOS_ID], [8, 9, EOS_ID]])
    tgt_in, _ = pad([[BOS_ID, 4, 5], [BOS_ID, 6]])
    return src, src_lens, tgt_in


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_cell_type_is_used_in_encoder_and_decoder(cell: str) -> None:
    model = _model(cell=cell, layers=2)
    assert type(model.encoder) is {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
    assert all(c.kind == cell for c in model.cells)
    memory, state = model.encode(*_batch()[:2])
    assert state.h.shape == (2, 2, 12)
    assert state.c.shape == ((2, 2, 12) if cell == "lstm" else (2, 2, 0))


def test_decoder_init_zeros_last_and_bridge() -> None:
    src, src_lens, _ = _batch()
    zeros = _model(decoder_init="zeros").encode(src, src_lens)[1]
    assert not zeros.h.any() and not zeros.c.any()
    model = _model(decoder_init="last")
    with torch.no_grad():
        _, (h_n, c_n) = model.encoder(nn.utils.rnn.pack_padded_sequence(
            model.src_embed(src), src_lens, batch_first=True, enforce_sorted=False))
        last = model.encode(src, src_lens)[1]
    torch.testing.assert_close(last.h[:, 0], torch.cat([h_n[0], h_n[1]], dim=-1))  # forward then backward
    torch.testing.assert_close(last.c[:, 0], torch.cat([c_n[0], c_n[1]], dim=-1))
    bridged = _model(decoder_init="bridge").encode(src, src_lens)[1]
    assert bridged.h.abs().max() < 1 and not bridged.c.any()  # tanh of a linear map; the cell starts empty


def test_unidirectional_encoder_gives_full_size_outputs() -> None:
    model = _model(bidirectional=False)
    assert not model.encoder.bidirectional and model.encoder.hidden_size == 12
    memory, _ = model.encode(*_batch()[:2])
    assert memory.values.shape == (2, 4, 12)


@pytest.mark.parametrize("emb_dim", [8, 12])
def test_tied_output_shares_the_target_embeddings(emb_dim: int) -> None:
    torch.manual_seed(0)
    model = Seq2Seq(20, 24, ModelConfig(emb_dim=emb_dim, hidden_dim=12, tie_output=True))
    assert model.out.weight is model.tgt_embed.weight
    assert hasattr(model, "out_proj") == (emb_dim != 12)  # a projection only where the sizes differ
    untied = Seq2Seq(20, 24, ModelConfig(emb_dim=emb_dim, hidden_dim=12))
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in untied.parameters())
    assert model(*_batch()).shape == (2, 3, 24)


def test_no_attention_means_no_attention_parameters_and_source_still_matters() -> None:
    model = _model(attention="none")
    assert model.attention is None and model.combine.in_features == 12
    src, src_lens, tgt_in = _batch()
    with torch.no_grad():
        other = model(src.flip(1).roll(1, 1), src_lens, tgt_in)
        assert not torch.equal(model(src, src_lens, tgt_in), other)  # the decoder still starts from the encoder


@pytest.mark.parametrize("where", ["embedding_dropout", "layer_dropout", "output_dropout"])
def test_each_dropout_acts_only_in_training_and_only_where_named(where: str) -> None:
    off = {"embedding_dropout": 0.0, "layer_dropout": 0.0, "output_dropout": 0.0}
    model = _model(layers=2, **{**off, where: 0.5}).train()
    src, src_lens, tgt_in = _batch()
    with torch.no_grad():
        assert not torch.equal(model(src, src_lens, tgt_in), model(src, src_lens, tgt_in))
        encoded = [model.encode(src, src_lens)[0].values for _ in range(2)]
    # only embedding dropout and the encoder's between-layer dropout touch the encoder
    assert torch.equal(*encoded) == (where == "output_dropout")
