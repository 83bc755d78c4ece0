"""Several independently trained models that share their tokenizers, translating as one.

At every step the ensemble's next-piece distribution is the weighted average of its members'
probabilities (a mixture, as fairseq averages them), so its scores are still log-probabilities
of a model: what beam search ranks, what force-scoring prints. The ensemble speaks the model's
three verbs (`encode`, `decode_step`, teacher-forced `forward`) and `attention_weights`, so the
search and the translation pipeline take it where they take one model. Its memory and state are
flat tuples of the members' tensors, whose rows the search reorders like any state's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seq2seq.errors import ConfigError
from seq2seq.checkpoint import TrainedModel
from seq2seq.model import DecoderState, Memory

FIELDS = len(Memory._fields)  # tensors per member in a memory, and in a state
assert len(DecoderState._fields) == FIELDS


class Ensemble(nn.Module):
    def __init__(self, members: Sequence[TrainedModel], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.weights = mixture_weights(weights, len(members))
        self.log_weights = [math.log(weight) for weight in self.weights]

    @property
    def attention(self) -> bool | None:
        """Something (true) when every member attends, None otherwise, as `Seq2Seq.attention` reads."""
        return True if all(member.attention is not None for member in self.members) else None

    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        encoded = [member.encode(src, src_lens) for member in self.members]
        return tuple(t for memory, _ in encoded for t in memory), tuple(t for _, state in encoded for t in state)

    def decode_step(
        self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...], memory: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The mixture's log-probabilities (rows, tgt_vocab) of the next piece, and every member's new state."""
        log_probs, states = [], []
        for index, member in enumerate(self.members):
            member_state = DecoderState(*_share(state, index))
            member_log_probs, member_state = member.decode_step(tokens, member_state, Memory(*_share(memory, index)))
            log_probs.append(member_log_probs)
            states.extend(member_state)
        return self._mixed(log_probs), tuple(states)

    def forward(self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the mixture's log-probabilities (batch, tgt_len, tgt_vocab). They serve as logits
        too: log_softmax leaves a normalised distribution's log-probabilities as they are."""
        return self._mixed([F.log_softmax(member(src, src_lens, tgt_in).float(), dim=-1) for member in self.members])

    def attention_weights(self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """The members' attention (batch, tgt_len, src_len), averaged with the ensemble's weights."""
        return sum(weight * member.attention_weights(src, src_lens, tgt_in)
                   for weight, member in zip(self.weights, self.members))

    def _mixed(self, log_probs: list[torch.Tensor]) -> torch.Tensor:
        """log sum_i w_i p_i, from each member's log p_i."""
        weighted = torch.stack([lp + log_weight for lp, log_weight in zip(log_probs, self.log_weights)])
        return torch.logsumexp(weighted, dim=0)


def mixture_weights(weights: Sequence[float] | None, members: int) -> list[float]:
    """The members' weights, checked and scaled to sum to 1; equal weights when none are given."""
    if weights is None:
        return [1.0 / members] * members
    if len(weights) != members:
        raise ConfigError(f"--weights gives {len(weights)} weights for {members} models: give one per model")
    if any(not weight > 0 or math.isinf(weight) for weight in weights):
        raise ConfigError(f"--weights must all be positive numbers, got {','.join(map(str, weights))}")
    total = sum(weights)
    return [weight / total for weight in weights]


def _share(tensors: tuple[torch.Tensor, ...], member: int) -> tuple[torch.Tensor, ...]:
    """One member's tensors from the ensemble's flat tuple."""
    return tensors[member * FIELDS : (member + 1) * FIELDS]
