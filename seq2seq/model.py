"""Encoder-decoder LSTM with attention and input feeding.

Three verbs: `encode` (source -> memory and the decoder's first state), `decode_step` (one target
token -> log-probabilities of the next, and the new state) and `forward` (teacher forcing). Both
`forward` and `decode_step` go through the same `_step`, so training and search cannot drift apart.
State is a value passed in and returned; the modules remember nothing between calls.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.config import ModelConfig
from seq2seq.tokenizer import PAD_ID


class Memory(NamedTuple):
    """What the decoder attends to; fixed for a sentence, so search never reorders it."""

    values: torch.Tensor  # (batch, src_len, hidden): encoder outputs
    keys: torch.Tensor    # (batch, src_len, attn or hidden): values projected once per batch
    mask: torch.Tensor    # (batch, src_len): True at real (non-pad) positions


class DecoderState(NamedTuple):
    """Batch-first so that search can reorder every field by beam index on dim 0."""

    h: torch.Tensor     # (batch, layers, hidden)
    c: torch.Tensor     # (batch, layers, hidden)
    feed: torch.Tensor  # (batch, hidden): previous attentional vector (input feeding)


class LSTMCell(nn.Module):
    """The classic LSTM cell, with its input map kept apart so it can run over all steps at once.

    gates = W_x x + W_h r (+ bias), split into input i, forget f, candidate C~ and output o:
    i, f, o = sigmoid(.), C~ = tanh(.), C = f * C_prev + i * C~, h = o * tanh(C).
    `r` is the recurrent input: the previous h (and, in the first decoder layer, the fed vector).
    """

    def __init__(self, input_dim: int, recurrent_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.input_map = nn.Linear(input_dim, 4 * hidden_dim)
        self.recurrent_map = nn.Linear(recurrent_dim, 4 * hidden_dim, bias=False)

    def forward(self, projected_input: torch.Tensor, recurrent: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates = projected_input + self.recurrent_map(recurrent)  # (batch, 4 * hidden)
        i, f, candidate, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(candidate)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class Attention(nn.Module):
    """Bahdanau (MLP) or Luong (dot / general) attention over the encoder outputs."""

    def __init__(self, kind: str, hidden_dim: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "bahdanau":
            self.key_map = nn.Linear(hidden_dim, hidden_dim, bias=False)
            self.query_map = nn.Linear(hidden_dim, hidden_dim)
            self.energy = nn.Linear(hidden_dim, 1, bias=False)
        elif kind == "luong-general":
            self.key_map = nn.Linear(hidden_dim, hidden_dim, bias=False)

    def keys(self, values: torch.Tensor) -> torch.Tensor:
        """Project the encoder outputs once per batch (not once per decoder step)."""
        return values if self.kind == "luong-dot" else self.key_map(values)

    def forward(self, query: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the context (batch, hidden) and the weights (batch, src_len)."""
        if self.kind == "bahdanau":
            hidden = torch.tanh(memory.keys + self.query_map(query).unsqueeze(1))  # (batch, src_len, hidden)
            scores = self.energy(hidden).squeeze(-1)                                # (batch, src_len)
        else:
            scores = torch.bmm(memory.keys, query.unsqueeze(-1)).squeeze(-1)       # (batch, src_len)
        weights = torch.softmax(scores.masked_fill(~memory.mask, float("-inf")), dim=-1)
        context = torch.bmm(weights.unsqueeze(1), memory.values).squeeze(1)        # (batch, hidden)
        return context, weights


class Seq2Seq(nn.Module):
    def __init__(
        self, src_vocab: int, tgt_vocab: int, *, emb_dim: int, hidden_dim: int, layers: int,
        attention: str, input_feeding: bool, dropout: float,
    ) -> None:
        super().__init__()
        self.layers, self.hidden_dim, self.input_feeding = layers, hidden_dim, input_feeding
        self.dropout = nn.Dropout(dropout)
        self.src_embed = nn.Embedding(src_vocab, emb_dim, padding_idx=PAD_ID)
        self.tgt_embed = nn.Embedding(tgt_vocab, emb_dim, padding_idx=PAD_ID)
        self.encoder = nn.LSTM(emb_dim, hidden_dim // 2, num_layers=layers, bidirectional=True,
                               batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.bridge = nn.Linear(hidden_dim, hidden_dim)
        feed_dim = hidden_dim if input_feeding else 0
        self.cells = nn.ModuleList(
            [LSTMCell(emb_dim, feed_dim + hidden_dim, hidden_dim)]
            + [LSTMCell(hidden_dim, hidden_dim, hidden_dim) for _ in range(layers - 1)]
        )
        self.attention = Attention(attention, hidden_dim)
        self.combine = nn.Linear(2 * hidden_dim, hidden_dim, bias=False)
        self.out = nn.Linear(hidden_dim, tgt_vocab)
        for param in self.parameters():
            nn.init.uniform_(param, -0.1, 0.1)

    @classmethod
    def from_config(cls, cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> Seq2Seq:
        """The one place that reads the model config."""
        return cls(src_vocab, tgt_vocab, emb_dim=cfg.emb_dim, hidden_dim=cfg.hidden_dim, layers=cfg.layers,
                   attention=cfg.attention, input_feeding=cfg.input_feeding, dropout=cfg.dropout)

    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> tuple[Memory, DecoderState]:
        embedded = self.dropout(self.src_embed(src))  # (batch, src_len, emb)
        packed = pack_padded_sequence(embedded, src_lens.cpu(), batch_first=True, enforce_sorted=False)
        outputs, (h_n, _) = self.encoder(packed)
        values, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src.size(1))  # (batch, src_len, hidden)
        # h_n: (layers * 2, batch, hidden / 2) -> (batch, layers, hidden), forward and backward side by side
        final = h_n.view(self.layers, 2, src.size(0), -1).permute(2, 0, 1, 3).reshape(src.size(0), self.layers, -1)
        h = torch.tanh(self.bridge(final))
        memory = Memory(values, self.attention.keys(values), src != PAD_ID)
        feed = values.new_zeros(src.size(0), self.hidden_dim)
        return memory, DecoderState(h, torch.zeros_like(h), feed)

    def _step(self, projected: torch.Tensor, state: DecoderState, memory: Memory) -> tuple[torch.Tensor, DecoderState]:
        """One decoder step from the first layer's projected input to the attentional vector."""
        hs, cs = [], []
        layer_input = projected
        for layer, cell in enumerate(self.cells):
            recurrent = state.h[:, layer]
            if layer == 0 and self.input_feeding:
                recurrent = torch.cat([state.feed, recurrent], dim=-1)
            elif layer > 0:
                layer_input = cell.input_map(self.dropout(hs[-1]))
            h, c = cell(layer_input, recurrent, state.c[:, layer])
            hs.append(h)
            cs.append(c)
        context, _ = self.attention(hs[-1], memory)
        attentional = self.dropout(torch.tanh(self.combine(torch.cat([context, hs[-1]], dim=-1))))  # (batch, hidden)
        return attentional, DecoderState(torch.stack(hs, 1), torch.stack(cs, 1), attentional)

    def decode_step(self, tokens: torch.Tensor, state: DecoderState, memory: Memory) -> tuple[torch.Tensor, DecoderState]:
        """tokens (batch,) -> log-probabilities (batch, tgt_vocab) of the next token, and the new state."""
        projected = self.cells[0].input_map(self.dropout(self.tgt_embed(tokens)))
        attentional, state = self._step(projected, state, memory)
        return F.log_softmax(self.out(attentional).float(), dim=-1), state

    def forward(self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits (batch, tgt_len, tgt_vocab) for every position of `tgt_in`."""
        memory, state = self.encode(src, src_lens)
        # The first layer's input map runs over all steps in one matrix product.
        projected = self.cells[0].input_map(self.dropout(self.tgt_embed(tgt_in)))  # (batch, tgt_len, 4 * hidden)
        outputs = []
        for projected_t in projected.unbind(1):  # unbind, not [:, t]: its backward does not refill the whole tensor per step
            attentional, state = self._step(projected_t, state, memory)
            outputs.append(attentional)
        return self.out(torch.stack(outputs, dim=1))  # one product for the output layer, too
