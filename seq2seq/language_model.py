"""A recurrent language model: the translation model's decoder without its encoder and attention.

    p(y_1 ... y_T) = prod_t p(y_t | y_<t),  p(y_t | y_<t) = softmax(W_out dropout(h_t) + b),
    h_t = the top layer of the LSTM (or GRU, tanh RNN) stack after reading BOS y_1 ... y_{t-1}.

It speaks the translation model's verbs with the same signatures (`encode`, `decode_step`, teacher-forced
`forward`), so that training, search, sampling, force-scoring and ensembles take it unchanged. Its source
is always empty (the EOS alone): `encode` reads only how many lines there are, and hands the search an empty
memory and the stack's zero state, one row per line.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seq2seq.config import ModelConfig
from seq2seq.model import DecoderState, Memory, NextPieceModel, RecurrentCell, embedding


class LanguageModel(NextPieceModel):
    attention = None  # nothing to attend to: what the pipeline checks before drawing or aligning attention

    def __init__(self, vocab: int, cfg: ModelConfig) -> None:
        super().__init__()
        hidden, layers = cfg.hidden_dim, cfg.layers
        self.cell, self.layers, self.hidden_dim = cfg.cell, layers, hidden
        self.embedding_dropout = nn.Dropout(cfg.embedding_dropout)
        self.layer_dropout = nn.Dropout(cfg.layer_dropout)
        self.output_dropout = nn.Dropout(cfg.output_dropout)
        self.tgt_embed = embedding(vocab, cfg.emb_dim)
        self.cells = nn.ModuleList([RecurrentCell(cfg.cell, cfg.emb_dim if layer == 0 else hidden, hidden)
                                    for layer in range(layers)])
        self._add_output_layer(cfg, vocab)

    @classmethod
    def from_config(cls, cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> LanguageModel:
        """As `Seq2Seq.from_config`; a language model has one vocabulary, the target's."""
        return cls(tgt_vocab, cfg)

    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> tuple[Memory, DecoderState]:
        """An empty memory and the zero state, one row per line of `src` (whose pieces are not read)."""
        rows, device = src.size(0), src.device
        nothing = torch.zeros(rows, 0, self.hidden_dim, device=device)
        h = torch.zeros(rows, self.layers, self.hidden_dim, device=device)
        c = torch.zeros_like(h) if self.cell == "lstm" else h.new_zeros(rows, self.layers, 0)
        return Memory(nothing, nothing, torch.zeros(rows, 0, dtype=torch.bool, device=device)), \
            DecoderState(h, c, h.new_zeros(rows, 0))

    def _step(self, input_gates: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """One step up the stack, from the first layer's input gates to the top layer's dropped-out output."""
        hs, cs = self._up_the_stack(input_gates, state)
        return self.output_dropout(hs[-1]), DecoderState(torch.stack(hs, 1), torch.stack(cs, 1), state.feed)

    def decode_step(self, tokens: torch.Tensor, state: DecoderState, memory: Memory) -> tuple[torch.Tensor, DecoderState]:
        """tokens (rows,) -> log-probabilities (rows, vocab) of the next token, and the new state."""
        top, state = self._step(self.cells[0].input_map(self.embedding_dropout(self.tgt_embed(tokens))), state)
        return F.log_softmax(self._logits(top).float(), dim=-1), state

    def forward(
        self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor, positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher forcing, as `Seq2Seq.forward`: logits for every position of `tgt_in`, or for the `positions` mask's."""
        _, state = self.encode(src, src_lens)
        input_gates = self.cells[0].input_map(self.embedding_dropout(self.tgt_embed(tgt_in)))  # all steps in one product
        outputs = []
        for gates_t in input_gates.unbind(1):
            top, state = self._step(gates_t, state)
            outputs.append(top)
        tops = torch.stack(outputs, dim=1)
        return self._logits(tops if positions is None else tops[positions])
