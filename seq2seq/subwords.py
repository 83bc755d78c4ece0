"""Subword regularisation (tokenizer.sampling_alpha): each training pair cut into pieces drawn at random, anew each epoch.

A model trained on several segmentations of the same text depends less on how its tokenizer happens to cut a
word (Kudo 2018; Provilkov et al. 2020). Only training samples: validation and translation always take the
tokenizer's one segmentation, as do the batch plans (so a sampled batch, of more pieces, runs somewhat over
train.batch_tokens).

SentencePiece can sample by itself (`encode(..., enable_sampling=True, nbest_size=-1)`), but from a generator
that its seed does not pin down across processes: with sentencepiece 0.2.3, the same `set_random_generator_seed`
gave other pieces in every new process, so a resumed run could not continue exactly, nor a run be repeated.
Here SentencePiece supplies what is deterministic, and every draw comes from a Python generator seeded by
(train.seed, epoch, pair): a pair gets the same pieces in an epoch whatever its batch, rank, micro-batch or a resume.

- unigram: one of SentencePiece's NBEST most probable segmentations x, drawn with probability proportional to
  P(x)^alpha (Kudo's l-best sampling; SentencePiece's own sampling draws from all of them);
- bpe: BPE-dropout as SentencePiece makes it: its merges replayed in its order (highest score first, leftmost on
  a tie) on its normalized text, each skipped with probability alpha. With alpha 0 it gives SentencePiece's own
  pieces (the tokenizers this package trains have no user-defined or unused pieces, which it would treat apart).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from typing import Protocol

import sentencepiece as spm

from seq2seq.config import TokenizerConfig
from seq2seq.data import Example
from seq2seq.tokenizer import EOS_ID, Tokenizer, Tokenizers

NBEST = 64  # unigram: the segmentations drawn from (the paper's l)


class Sampler(Protocol):
    def sample(self, texts: Sequence[str], generators: Sequence[random.Random]) -> list[list[int]]:
        """Each text's pieces, drawn with its generator."""


class SampledPairs:
    """The training pairs' text (in the order of their examples), cut anew for every epoch."""

    def __init__(self, tokenizers: Tokenizers, cfg: TokenizerConfig, seed: int, sources: list[str], targets: list[str]) -> None:
        source = sampler(tokenizers.src, cfg.model_type, cfg.sampling_alpha)
        target = source if tokenizers.joint else sampler(tokenizers.tgt, cfg.target_model_type or cfg.model_type,
                                                         cfg.sampling_alpha)
        self.samplers, self.seed, self.sources, self.targets = (source, target), seed, sources, targets

    def pairs(self, indices: Sequence[int], epoch: int) -> list[Example]:
        """The examples `indices` as pieces drawn for `epoch`: a function of (seed, epoch, index) alone."""
        generators = [random.Random(f"{self.seed}:{epoch}:{index}") for index in indices]
        sources = self.samplers[0].sample([self.sources[i] for i in indices], generators)
        targets = self.samplers[1].sample([self.targets[i] for i in indices], generators)
        return [Example([*source, EOS_ID], target) for source, target in zip(sources, targets, strict=True)]


def sampler(tokenizer: Tokenizer, model_type: str, alpha: float) -> Sampler:
    """How `tokenizer` (a unigram or bpe model) draws segmentations."""
    return BestOf(tokenizer.processor, alpha) if model_type == "unigram" else MergeDropout(tokenizer.processor, alpha)


class BestOf:
    """Unigram: one of the NBEST best segmentations x, with probability proportional to P(x)^alpha."""

    def __init__(self, processor: spm.SentencePieceProcessor, alpha: float) -> None:
        self.processor, self.alpha = processor, alpha
        self.scores = [processor.get_score(i) for i in range(processor.get_piece_size())]  # log P(piece)

    def sample(self, texts: Sequence[str], generators: Sequence[random.Random]) -> list[list[int]]:
        drawn = []
        for candidates, generator in zip(self.processor.nbest_encode(list(texts), nbest_size=NBEST, out_type=int),
                                         generators, strict=True):
            log_p = [sum(self.scores[i] for i in ids) for ids in candidates]
            best = max(log_p)
            drawn.append(generator.choices(candidates, [math.exp(self.alpha * (value - best)) for value in log_p])[0])
        return drawn


class MergeDropout:
    """BPE: SentencePiece's merges, each skipped with probability alpha."""

    def __init__(self, processor: spm.SentencePieceProcessor, alpha: float) -> None:
        self.processor, self.alpha, self.unknown = processor, alpha, processor.unk_id()
        size = processor.get_piece_size()
        self.pieces = {processor.id_to_piece(i): (processor.get_score(i), i) for i in range(size)
                       if not (processor.is_control(i) or processor.is_unknown(i) or processor.is_byte(i))}
        self.bytes = [processor.piece_to_id(f"<0x{byte:02X}>") for byte in range(256)] \
            if any(processor.is_byte(i) for i in range(size)) else None

    def sample(self, texts: Sequence[str], generators: Sequence[random.Random]) -> list[list[int]]:
        return [self._ids(self._merged(text, generator)) for text, generator in zip(texts, generators, strict=True)]

    def _merged(self, text: str, generator: random.Random) -> list[str]:
        """The normalized text's characters, merged pair by pair as SentencePiece merges them, bar the skipped merges."""
        symbols = list(self.processor.normalize(text))
        following, preceding = [*range(1, len(symbols)), -1], list(range(-1, len(symbols) - 1))
        agenda: list[tuple[float, int, int, int]] = []  # (-score, left, right, length): best first, then leftmost

        def consider(left: int, right: int) -> None:
            if left >= 0 and right >= 0 and (found := self.pieces.get(symbols[left] + symbols[right])):
                heapq.heappush(agenda, (-found[0], left, right, len(symbols[left]) + len(symbols[right])))

        for right in range(1, len(symbols)):
            consider(right - 1, right)
        while agenda:
            _, left, right, length = heapq.heappop(agenda)
            if not symbols[left] or not symbols[right] or len(symbols[left]) + len(symbols[right]) != length:
                continue  # one side has been merged since
            if generator.random() < self.alpha:
                continue  # dropped
            symbols[left], symbols[right] = symbols[left] + symbols[right], ""
            following[left] = following[right]
            if following[right] >= 0:
                preceding[following[right]] = left
            consider(preceding[left], left)
            consider(left, following[left])
        return [symbol for symbol in symbols if symbol]

    def _ids(self, pieces: list[str]) -> list[int]:
        """Piece ids as SentencePiece gives them: a piece outside the vocabulary is spelled in byte pieces with byte
        fallback, else it is <unk>, one for a run of them."""
        ids: list[int] = []
        for piece in pieces:
            if found := self.pieces.get(piece):
                ids.append(found[1])
            elif self.bytes:
                ids.extend(self.bytes[byte] for byte in piece.encode("utf-8"))
            elif not ids or ids[-1] != self.unknown:
                ids.append(self.unknown)
        return ids
