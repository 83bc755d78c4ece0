"""Encoder-decoder RNN (LSTM, GRU or tanh RNN) with attention and input feeding.

Three verbs: `encode` (source -> memory and the decoder's first state), `decode_step` (one target
token -> log-probabilities of the next, and the new state) and `forward` (teacher forcing). Both
`forward` and `decode_step` go through the same `_step`, so training and search cannot drift apart;
`attention_weights` reads the weights of that same teacher-forced pass (for pictures and alignments).
State is a value passed in and returned; the modules remember nothing between calls.
"""

from __future__ import annotations

from typing import NamedTuple, Self

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.config import ModelConfig
from seq2seq.tokenizer import PAD_ID

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
ENCODERS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class Memory(NamedTuple):
    """What the decoder attends to; fixed for a sentence, so search never reorders it."""

    values: torch.Tensor  # (batch, src_len, hidden): encoder outputs
    keys: torch.Tensor    # (batch, src_len, hidden): values projected once per batch
    mask: torch.Tensor    # (batch, src_len): True at real (non-pad) positions


class DecoderState(NamedTuple):
    """Batch-first so that search can reorder every field by beam index on dim 0."""

    h: torch.Tensor     # (batch, layers, hidden)
    c: torch.Tensor     # (batch, layers, hidden) for an LSTM; (batch, layers, 0) otherwise
    feed: torch.Tensor  # (batch, hidden): previous attentional vector (input feeding)


class RecurrentCell(nn.Module):
    """One step of an LSTM, GRU or tanh RNN, with the input's share of the gates computed outside.

    Keeping `input_map` apart lets the decoder run it over all target positions in one product.
    LSTM (gates i, f, C~, o; the classic cell):
        i, f, o = sigmoid(.), C~ = tanh(.), C = f * C_prev + i * C~, h = o * tanh(C)
    GRU (gates r, z, n): r, z = sigmoid(.), n = tanh(x_n + r * (W_hn h + b_hn)), h = (1 - z) * n + z * h
    RNN: h = tanh(W_x x + W_h h + b)
    """

    def __init__(self, kind: str, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.kind = kind
        self.input_map = nn.Linear(input_dim, GATES[kind] * hidden_dim)
        self.hidden_map = nn.Linear(hidden_dim, GATES[kind] * hidden_dim, bias=kind == "gru")

    def forward(self, input_gates: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_gates = self.hidden_map(h)  # (batch, gates * hidden)
        if self.kind == "lstm":
            i, f, candidate, o = (input_gates + hidden_gates).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(candidate)
            return torch.sigmoid(o) * torch.tanh(c), c
        if self.kind == "gru":
            x_r, x_z, x_n = input_gates.chunk(3, dim=-1)
            h_r, h_z, h_n = hidden_gates.chunk(3, dim=-1)
            r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
            return (1 - z) * torch.tanh(x_n + r * h_n) + z * h, c
        return torch.tanh(input_gates + hidden_gates), c


class Attention(nn.Module):
    """Bahdanau (MLP) or Luong (dot / general) attention over the encoder outputs.

    Bahdanau's score v . tanh(K + q) runs over every source position at every decoder step. It is
    computed as 2 v . sigmoid(2K + 2q): since tanh(z) = 2 sigmoid(2z) - 1, the two differ by the
    constant v . 1, which the softmax ignores, so the weights are the same. torch's sigmoid is several
    times faster than its tanh on CPU. The keys are stored already doubled (`keys`).
    """

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
        if self.kind == "bahdanau":
            return 2 * self.key_map(values)
        return self.key_map(values) if hasattr(self, "key_map") else values

    def forward(self, query: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the context (rows, hidden) and the weights (rows, src_len).

        The rows of `query` come in equal groups, one per memory row: in beam search, a sentence's
        beams all attend to its one copy of the memory, so the memory is never repeated per beam and
        the context is one (beams x src_len) by (src_len x hidden) product per sentence.
        """
        batch, src_len, hidden_dim = memory.values.shape
        grouped = query.view(batch, -1, hidden_dim)                                          # (batch, group, hidden)
        if self.kind == "bahdanau":
            query_part = self.query_map(grouped).unsqueeze(2)                                # (batch, group, 1, hidden)
            hidden = torch.add(memory.keys.unsqueeze(1), query_part, alpha=2).sigmoid_()     # (batch, group, src_len, hidden)
            scores = 2 * self.energy(hidden).squeeze(-1)                                     # (batch, group, src_len)
        else:
            scores = torch.bmm(grouped, memory.keys.transpose(1, 2))                         # (batch, group, src_len)
        weights = torch.softmax(scores.masked_fill(~memory.mask.unsqueeze(1), float("-inf")), dim=-1)
        context = torch.bmm(weights, memory.values)                                          # (batch, group, hidden)
        return context.view(-1, hidden_dim), weights.view(-1, src_len)


class NextPieceModel(nn.Module):
    """What the translation model and the language model (`seq2seq.language_model`) share: the decoder's stack of
    recurrent layers, the output layer over the target pieces (optionally tied to the target embeddings), and
    loading saved weights without drawing random ones. Each subclass makes its own layers, then `_add_output_layer`."""

    tgt_embed: nn.Embedding
    cells: nn.ModuleList        # RecurrentCell, one per layer
    layer_dropout: nn.Dropout   # between layers

    @classmethod
    def from_config(cls, cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> Self:
        raise NotImplementedError

    def _add_output_layer(self, cfg: ModelConfig, vocab: int) -> None:
        """The output layer (and the projection that a tied one of another width reads through), then every
        weight's initial draw, uniform in [-0.1, 0.1]."""
        if cfg.tie_output and cfg.emb_dim != cfg.hidden_dim:
            self.out_proj = nn.Linear(cfg.hidden_dim, cfg.emb_dim, bias=False)
        self.out = nn.Linear(cfg.emb_dim if cfg.tie_output else cfg.hidden_dim, vocab)
        for param in self.parameters():
            nn.init.uniform_(param, -0.1, 0.1)
        self.tie_output = cfg.tie_output
        self._tie()

    def _tie(self) -> None:
        if self.tie_output:
            self.out.weight = self.tgt_embed.weight

    @classmethod
    def from_state(cls, cfg: ModelConfig, src_vocab: int, tgt_vocab: int, state: dict[str, torch.Tensor]) -> Self:
        """A model holding `state`'s weights (fp32), built without drawing the random ones they replace.

        The layers are made on the meta device (shapes, no memory) and then take the state's tensors:
        the random initialisation would cost a cold-start translation about 0.1 s. A missing,
        unexpected or misshapen weight is a RuntimeError, as with `load_state_dict`.
        """
        with torch.device("meta"):
            model = cls.from_config(cfg, src_vocab, tgt_vocab)
        model.load_state_dict({name: tensor.float() for name, tensor in state.items()}, assign=True)
        model._tie()  # assigning gave the output layer and the target embedding a Parameter each
        return model

    def _up_the_stack(self, input_gates: torch.Tensor, state: DecoderState) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One step of the decoder's stacked recurrent layers, from the first layer's input gates: each layer's h and c."""
        hs, cs = [], []
        for layer, cell in enumerate(self.cells):
            if layer > 0:
                input_gates = cell.input_map(self.layer_dropout(hs[-1]))
            h, c = cell(input_gates, state.h[:, layer], state.c[:, layer])
            hs.append(h)
            cs.append(c)
        return hs, cs

    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.out_proj(features) if hasattr(self, "out_proj") else features)


class Seq2Seq(NextPieceModel):
    def __init__(self, src_vocab: int, tgt_vocab: int, cfg: ModelConfig) -> None:
        super().__init__()
        hidden, layers = cfg.hidden_dim, cfg.layers
        self.cell, self.layers, self.hidden_dim = cfg.cell, layers, hidden
        self.input_feeding, self.decoder_init = cfg.input_feeding, cfg.decoder_init
        self.embedding_dropout = nn.Dropout(cfg.embedding_dropout)
        self.layer_dropout = nn.Dropout(cfg.layer_dropout)
        self.output_dropout = nn.Dropout(cfg.output_dropout)
        self.src_embed = embedding(src_vocab, cfg.emb_dim)
        self.tgt_embed = embedding(tgt_vocab, cfg.emb_dim)
        directions = 2 if cfg.bidirectional else 1
        self.encoder = ENCODERS[cfg.cell](cfg.emb_dim, hidden // directions, num_layers=layers, batch_first=True,
                                          bidirectional=cfg.bidirectional, dropout=cfg.layer_dropout if layers > 1 else 0.0)
        if cfg.decoder_init == "bridge":
            self.bridge = nn.Linear(hidden, hidden)
        self.cells = nn.ModuleList([RecurrentCell(cfg.cell, cfg.emb_dim if layer == 0 else hidden, hidden)
                                    for layer in range(layers)])
        if cfg.input_feeding:
            self.feed_map = nn.Linear(hidden, GATES[cfg.cell] * hidden, bias=False)
        self.attention = Attention(cfg.attention, hidden) if cfg.attention != "none" else None
        self.combine = nn.Linear((2 if self.attention else 1) * hidden, hidden, bias=False)
        self._add_output_layer(cfg, tgt_vocab)

    @classmethod
    def from_config(cls, cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> Seq2Seq:
        """The one place that reads the model config."""
        return cls(src_vocab, tgt_vocab, cfg)

    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> tuple[Memory, DecoderState]:
        embedded = self.embedding_dropout(self.src_embed(src))  # (batch, src_len, emb)
        packed = pack_padded_sequence(embedded, src_lens.cpu(), batch_first=True, enforce_sorted=False)
        outputs, final = self.encoder(packed)
        values, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src.size(1))  # (batch, src_len, hidden)
        final_h, final_c = final if self.cell == "lstm" else (final, None)
        keys = self.attention.keys(values) if self.attention else values
        memory = Memory(values, keys, src != PAD_ID)
        h = self._by_layer(final_h)
        if self.decoder_init == "bridge":
            h = torch.tanh(self.bridge(h))
        elif self.decoder_init == "zeros":
            h = torch.zeros_like(h)
        if self.cell != "lstm":
            c = h.new_zeros(*h.shape[:2], 0)
        elif self.decoder_init == "last":
            c = self._by_layer(final_c)
        else:
            c = torch.zeros_like(h)
        return memory, DecoderState(h, c, values.new_zeros(src.size(0), self.hidden_dim))

    def _by_layer(self, final: torch.Tensor) -> torch.Tensor:
        """(layers * directions, batch, hidden / directions) -> (batch, layers, hidden), directions side by side."""
        batch = final.size(1)
        return final.view(self.layers, -1, batch, final.size(-1)).permute(2, 0, 1, 3).reshape(batch, self.layers, -1)

    def _step(
        self, input_gates: torch.Tensor, state: DecoderState, memory: Memory,
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor | None]:
        """One decoder step from the first layer's input gates to the attentional vector.

        Also returns the attention weights it used (batch, src_len), None without attention: they
        are a by-product of the step, returned rather than kept on the module.
        """
        if self.input_feeding:
            input_gates = input_gates + self.feed_map(state.feed)
        hs, cs = self._up_the_stack(input_gates, state)
        top = hs[-1]
        context, weights = self.attention(top, memory) if self.attention else (None, None)
        features = [context, top] if self.attention else [top]
        attentional = self.output_dropout(torch.tanh(self.combine(torch.cat(features, dim=-1))))  # (batch, hidden)
        return attentional, DecoderState(torch.stack(hs, 1), torch.stack(cs, 1), attentional), weights

    def decode_step(self, tokens: torch.Tensor, state: DecoderState, memory: Memory) -> tuple[torch.Tensor, DecoderState]:
        """tokens (rows,) -> log-probabilities (rows, tgt_vocab) of the next token, and the new state.

        The rows are the memory's sentences, or a whole number of rows per sentence (its beams, side by side).
        """
        input_gates = self.cells[0].input_map(self.embedding_dropout(self.tgt_embed(tokens)))
        attentional, state, _ = self._step(input_gates, state, memory)
        return F.log_softmax(self._logits(attentional).float(), dim=-1), state

    def forward(
        self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor, positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher forcing: logits (batch, tgt_len, tgt_vocab) for every position of `tgt_in`, or (n, tgt_vocab)
        for the n positions where the mask `positions` (batch, tgt_len) is True.

        Training passes the target's real tokens as `positions`: padding then never reaches the output
        layer, the largest product of the model.
        """
        outputs, _ = self._unroll(src, src_lens, tgt_in)
        attentional = torch.stack(outputs, dim=1)
        return self._logits(attentional if positions is None else attentional[positions])  # one product for all steps

    def attention_weights(self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the attention (batch, tgt_len, src_len) of every position of `tgt_in` over the source.

        Row t is what the step fed `tgt_in[:, t]` attended to while predicting the next token, the
        same numbers `decode_step` computes: search stays model-agnostic and the weights of its
        chosen outputs are recomputed here afterwards.
        """
        if self.attention is None:
            raise ValueError("a model without attention (model.attention = none) has no attention weights")
        _, weights = self._unroll(src, src_lens, tgt_in)
        return torch.stack(weights, dim=1)

    def _unroll(
        self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Encode, then `_step` over every position of `tgt_in`: (attentional vectors, attention weights) per step."""
        memory, state = self.encode(src, src_lens)
        # The first layer's input map runs over all steps in one matrix product.
        input_gates = self.cells[0].input_map(self.embedding_dropout(self.tgt_embed(tgt_in)))  # (batch, tgt_len, gates * hidden)
        outputs, weights = [], []
        for gates_t in input_gates.unbind(1):  # unbind, not [:, t]: its backward does not refill the whole tensor per step
            attentional, state, weights_t = self._step(gates_t, state, memory)
            outputs.append(attentional)
            weights.append(weights_t)
        return outputs, weights


def embedding(vocab: int, dim: int) -> nn.Embedding:
    """An embedding whose weights `Seq2Seq` initialises: nn.Embedding's own initialisation zeroes the
    padding row with an indexing op that costs about 1 s on the meta device (see `from_state`)."""
    return nn.Embedding.from_pretrained(torch.empty(vocab, dim), freeze=False, padding_idx=PAD_ID)
