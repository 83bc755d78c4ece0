"""Text in, text out: tokenize, batch by length, encode, search, detokenize, restore input order."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import NamedTuple

import torch

from seq2seq.config import SearchConfig
from seq2seq.data import pad
from seq2seq.model import Memory, Seq2Seq
from seq2seq.search import Hypothesis, StepFn, beam_search, greedy_search, repeat_rows
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizers

BARRED = (PAD_ID, BOS_ID)  # never proposed by the search: padding, and BOS after the start


class Translation(NamedTuple):
    text: str
    score: float        # log-probability of the output pieces + EOS (0.0 for an empty input)
    tokens: list[int]   # target piece ids, without BOS/EOS


def search_batch(model: Seq2Seq, sources: Sequence[Sequence[int]], search: SearchConfig, *, nbest: int = 1) -> list[list[Hypothesis]]:
    """Search for a batch of encoded, non-empty sources (EOS appended here): nbest hypotheses each."""
    src, src_lens = pad([[*ids, EOS_ID] for ids in sources])
    max_lens = (src_lens * search.max_length_ratio + search.max_length_constant).long().clamp(min=search.min_length + 1)
    was_training = model.training
    model.eval()
    try:
        bf16 = torch.autocast(src.device.type, dtype=torch.bfloat16, enabled=search.precision == "bf16")
        with torch.inference_mode(), bf16:
            memory, state = model.encode(src, src_lens)
            if search.beam_size == 1 and nbest == 1:
                best = greedy_search(_step_fn(model, memory), state, batch_size=len(sources), bos_id=BOS_ID,
                                     eos_id=EOS_ID, max_lens=max_lens, min_length=search.min_length, banned=BARRED)
                return [[hyp] for hyp in best]
            return beam_search(_step_fn(model, repeat_rows(memory, search.beam_size)), state,
                               batch_size=len(sources), beam_size=search.beam_size, bos_id=BOS_ID, eos_id=EOS_ID,
                               max_lens=max_lens, min_length=search.min_length, alpha=search.length_penalty,
                               length_norm=search.length_norm, nbest=nbest, banned=BARRED)
    finally:
        model.train(was_training)


def _step_fn(model: Seq2Seq, memory: Memory) -> StepFn:
    """The search's view of the model: next-token log-probabilities for the current tokens and state."""
    return lambda tokens, state: model.decode_step(tokens, state, memory)


def translate(
    model: Seq2Seq, tokenizers: Tokenizers, lines: Iterable[str], search: SearchConfig, *,
    nbest: int = 1, chunk_lines: int | None = None,
) -> Iterator[list[Translation]]:
    """Yield the nbest translations of each line, in input order, as soon as its chunk is done.

    Lines are read `chunk_lines` at a time (default: 8 batches), sorted by length inside the chunk
    so that batches carry little padding, and put back in order; memory stays flat however long
    the input. An empty line gives an empty translation without calling the model.
    """
    chunk_lines = chunk_lines or 8 * search.batch_size
    lines = iter(lines)
    while chunk := list(islice(lines, chunk_lines)):
        encoded = tokenizers.src.encode(chunk)
        results: list[list[Translation]] = [[Translation("", 0.0, [])] for _ in chunk]
        order = sorted((i for i, ids in enumerate(encoded) if ids), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), search.batch_size):
            indices = order[start : start + search.batch_size]
            found = search_batch(model, [encoded[i] for i in indices], search, nbest=nbest)
            for index, hypotheses in zip(indices, found):
                texts = tokenizers.tgt.decode([hyp.tokens for hyp in hypotheses])
                results[index] = [Translation(text, hyp.score, hyp.tokens) for text, hyp in zip(texts, hypotheses)]
        yield from results


def translate_all(model: Seq2Seq, tokenizers: Tokenizers, lines: Sequence[str], search: SearchConfig) -> list[str]:
    """The best translation of every line, as text (what validation scores)."""
    return [best[0].text for best in translate(model, tokenizers, lines, search, chunk_lines=len(lines) or 1)]

