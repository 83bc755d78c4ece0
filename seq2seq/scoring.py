"""Force-scoring: the model's log-probability of given outputs, for reranking n-best lists and filtering data.

A target is scored by teacher forcing: one pass over its pieces gives every piece's log-probability
given the source and the pieces before it, then EOS's. The sum is the score beam search would print
for that same output. Pairs are read a chunk at a time and batched by length, like translation. Summed
over a text, the scores give its perplexity (`Perplexity`): a language model's measure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import NamedTuple

import torch.nn.functional as F

from seq2seq import devices
from seq2seq.data import pad
from seq2seq.tokenizer import BOS_ID, EOS_ID, Tokenizers
from seq2seq.translation import Model, halving, inference, on_device


class TargetScore(NamedTuple):
    score: float               # natural log-probability of the target's pieces and EOS under the model
    tokens: list[int]          # the target's pieces
    token_scores: list[float]  # the log-probability of each piece, then of EOS
    characters: int            # the target text's characters


class Perplexity:
    """How well a model predicts a text, from its lines' scores: exp of the negative mean log-probability, per
    piece (EOS included) and per character (each line's end counted as one, the EOS's share). Per character,
    models with different tokenizers compare."""

    def __init__(self) -> None:
        self.log_prob, self.pieces, self.characters = 0.0, 0, 0

    def add(self, scored: TargetScore) -> None:
        self.log_prob += scored.score
        self.pieces += len(scored.token_scores)
        self.characters += scored.characters + 1

    @property
    def per_piece(self) -> float:
        return math.exp(-self.log_prob / max(self.pieces, 1))

    @property
    def per_character(self) -> float:
        return math.exp(-self.log_prob / max(self.characters, 1))


def score_batch(model: Model, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *,
                precision: str = "fp32") -> list[list[float]]:
    """Each target's pieces' log-probabilities and EOS's, given its source (EOS appended to both here)."""
    src, src_lens = on_device(model, pad([[*ids, EOS_ID] for ids in sources]))
    tgt_in, _ = on_device(model, pad([[BOS_ID, *ids] for ids in targets]))
    tgt_out, _ = on_device(model, pad([[*ids, EOS_ID] for ids in targets]))
    with inference(model, precision):
        log_probs = F.log_softmax(model(src, src_lens, tgt_in).float(), dim=-1)
    picked = log_probs.gather(2, tgt_out.unsqueeze(-1)).squeeze(-1).cpu()  # (batch, tgt_len)
    return [picked[row, : len(ids) + 1].tolist() for row, ids in enumerate(targets)]


def score(
    model: Model, tokenizers: Tokenizers, pairs: Iterable[tuple[str, str]], *, batch_size: int, precision: str = "fp32",
    chunk_lines: int | None = None,
) -> Iterator[TargetScore]:
    """Yield the score of each (source, target) pair, in input order, a chunk of `chunk_lines` pairs at a time
    (default: 8 batches), batched by length inside the chunk."""
    pairs = iter(pairs)
    device = devices.of(model)
    while chunk := list(islice(pairs, chunk_lines or 8 * batch_size)):
        sources = tokenizers.src.encode([source for source, _ in chunk])
        targets = tokenizers.tgt.encode([target for _, target in chunk])
        order = sorted(range(len(chunk)), key=lambda i: (len(sources[i]) + len(targets[i])))
        found: list[list[float]] = [[] for _ in chunk]
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            scored = halving(lambda part: score_batch(model, [sources[i] for i in part], [targets[i] for i in part],
                                                      precision=precision),
                             batch, lambda i: len(sources[i]) + len(targets[i]), device)
            for number, token_scores in zip(batch, scored):
                found[number] = token_scores
        for (_, text), ids, token_scores in zip(chunk, targets, found):
            yield TargetScore(sum(token_scores), ids, token_scores, len(text))
