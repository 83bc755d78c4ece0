"""Text in, text out: tokenize, batch by length, encode, search, detokenize, restore input order.

Asked for, each output also carries its attention over the source (for pictures and alignments),
recomputed after the search by teacher forcing so that the search itself stays model-agnostic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from typing import NamedTuple, TypeVar

import torch

from seq2seq import devices
from seq2seq.config import SearchConfig
from seq2seq.data import pad
from seq2seq.errors import ConfigError, OutOfMemory
from seq2seq.model import Memory, Seq2Seq
from seq2seq.search import Hypothesis, Narrow, StepFn, TopK, beam_search, greedy_search, reorder, torch_top_k
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizers
from seq2seq.workers import map_in_order

Line = TypeVar("Line")
Done = TypeVar("Done")

BARRED = (PAD_ID, BOS_ID)  # never proposed by the search: padding, and BOS after the start


class SourceAttention(NamedTuple):
    """Where an output looked while it was written, piece by piece (SentencePiece pieces, not words)."""

    src_tokens: list[int]   # source piece ids, without the EOS the model reads after them
    weights: torch.Tensor   # (len(tokens) + 1, len(src_tokens) + 1): rows the output's pieces + EOS, columns the source's + EOS


class Translation(NamedTuple):
    text: str
    score: float        # log-probability of the output pieces + EOS (0.0 for an empty input)
    tokens: list[int]   # target piece ids, without BOS/EOS
    attention: SourceAttention | None = None  # only when asked for; None for an empty input

    @property
    def alignment(self) -> list[tuple[int, int]]:
        """(source, target) piece index pairs, 0-based (`hard_alignment`); empty without attention."""
        return hard_alignment(self.attention.weights) if self.attention is not None else []


@contextmanager
def _inference(model: Seq2Seq, precision: str) -> Iterator[None]:
    """Eval mode (no dropout), no autograd, bf16 autocast if asked; the model's mode is restored after."""
    if precision == "bf16":
        devices.require_bf16_units(devices.of(model))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(devices.of(model).type, dtype=torch.bfloat16,
                                                    enabled=precision == "bf16"):
            yield
    finally:
        model.train(was_training)


def search_batch(
    model: Seq2Seq, sources: Sequence[Sequence[int]], search: SearchConfig, *, nbest: int = 1, top_k: TopK = torch_top_k,
) -> list[list[Hypothesis]]:
    """Search for a batch of encoded, non-empty sources (EOS appended here): nbest hypotheses each, on the
    model's device."""
    src, src_lens = _on_device(model, pad([[*ids, EOS_ID] for ids in sources]))
    max_lens = (src_lens * search.max_length_ratio + search.max_length_constant).long().clamp(min=search.min_length + 1)
    with _inference(model, search.precision):
        memory, state = model.encode(src, src_lens)
        if search.beam_size == 1 and nbest == 1:
            best = greedy_search(_step_fn(model, memory), state, batch_size=len(sources), bos_id=BOS_ID,
                                 eos_id=EOS_ID, max_lens=max_lens, min_length=search.min_length, banned=BARRED,
                                 narrow=_narrowing(model, memory), top_k=top_k)
            return [[hyp] for hyp in best]
        return beam_search(_step_fn(model, memory), state,
                           batch_size=len(sources), beam_size=search.beam_size, bos_id=BOS_ID, eos_id=EOS_ID,
                           max_lens=max_lens, min_length=search.min_length, alpha=search.length_penalty,
                           length_norm=search.length_norm, nbest=nbest, banned=BARRED,
                           narrow=_narrowing(model, memory), top_k=top_k)


def attention_batch(
    model: Seq2Seq, sources: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]], *, precision: str = "fp32",
) -> list[torch.Tensor]:
    """The attention of each output over its source: (len(output) + 1, len(source) + 1) weights each.

    Recomputed by teacher forcing through the model's own decoder step, so the rows are the weights
    the search's steps used for these outputs (up to rounding between batch shapes).
    """
    src, src_lens = _on_device(model, pad([[*ids, EOS_ID] for ids in sources]))
    tgt_in, _ = _on_device(model, pad([[BOS_ID, *ids] for ids in outputs]))
    with _inference(model, precision):
        weights = model.attention_weights(src, src_lens, tgt_in).float().cpu()  # (batch, tgt_len, src_len)
    return [weights[row, : len(output) + 1, : len(source) + 1] for row, (source, output) in enumerate(zip(sources, outputs))]


def _on_device(model: Seq2Seq, padded: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    ids, lens = padded
    device = devices.of(model)
    return ids.to(device), lens.to(device)


def hard_alignment(weights: torch.Tensor) -> list[tuple[int, int]]:
    """(source, target) piece index pairs, 0-based, in target order: each output piece to the source piece it attended to most.

    The output's EOS row is left out; a piece that attended most to the source's EOS is left
    unaligned (as NULL in fast_align) rather than pinned to a piece it did not look at.
    """
    source_pieces = weights.size(1) - 1
    best = weights[:-1].argmax(dim=1).tolist()
    return [(source, target) for target, source in enumerate(best) if source < source_pieces]


def _step_fn(model: Seq2Seq, memory: Memory) -> StepFn:
    """The search's view of the model: next-token log-probabilities for the current tokens and state."""
    return lambda tokens, state: model.decode_step(tokens, state, memory)


def _narrowing(model: Seq2Seq, memory: Memory) -> Narrow:
    """How the search drops done sentences: the step over the memory of the sentences still searched."""
    return lambda sentences: _step_fn(model, reorder(memory, sentences))


def translate(
    model: Seq2Seq, tokenizers: Tokenizers, lines: Iterable[str], search: SearchConfig, *,
    nbest: int = 1, chunk_lines: int | None = None, attention: bool = False, max_source_pieces: int = 0,
    on_cut: Callable[[int, int], None] = lambda number, pieces: None, workers: int = 1, top_k: TopK = torch_top_k,
) -> Iterator[list[Translation]]:
    """Yield the nbest translations of each line, in input order, as soon as its chunk is done.

    The pipeline alone, for a model already prepared (`seq2seq.translator.Translator` prepares one and
    checks the options). Lines are read `chunk_lines` at a time (default: 8 batches), sorted by length
    inside the chunk so that batches carry little padding, and put back in order; memory stays flat
    however long the input. An empty line gives an empty translation without calling the model. With
    `attention`, every hypothesis carries its `SourceAttention`.

    A line longer than `max_source_pieces` (0 = no limit) is translated from its first pieces only,
    after `on_cut(line_number, pieces)`: decoding time grows with the source, so one 100,000-character
    line could stall a whole file; cut, it still gets its one output line.
    With `workers` above 1, that many forked processes search the batches side by side on the CPU
    (`seq2seq.workers`): the results are the same as one process's, up to rounding, and a chunk comes
    out once the next one has been read and handed to them.
    """
    # checked now, not when the first line is read
    if attention and model.attention is None:
        raise ConfigError("this model has no attention (model.attention = none): there is no attention "
                          "to draw or align (--attention-plot, --alignment)")
    if search.precision == "bf16":
        devices.require_bf16_units(devices.of(model))
    return _translate(model, tokenizers, iter(lines), search, nbest=nbest, chunk_lines=chunk_lines or 8 * search.batch_size,
                      attention=attention, max_source_pieces=max_source_pieces, on_cut=on_cut, workers=workers,
                      top_k=top_k)


class _Chunk(NamedTuple):
    """Lines read together: how many, and their batches (each line's number in the chunk, and its pieces)."""

    size: int
    numbers: list[list[int]]
    sources: list[list[list[int]]]


BatchResult = list[list[tuple[Hypothesis, SourceAttention | None]]]  # per line of a batch, its hypotheses


def _translate(
    model: Seq2Seq, tokenizers: Tokenizers, lines: Iterator[str], search: SearchConfig, *,
    nbest: int, chunk_lines: int, attention: bool, max_source_pieces: int, on_cut: Callable[[int, int], None],
    workers: int, top_k: TopK,
) -> Iterator[list[Translation]]:
    """`translate`'s loop, once its arguments are checked."""
    device = devices.of(model)

    def search_lines(sources: list[list[int]]) -> BatchResult:
        found = _halving(lambda part: search_batch(model, part, search, nbest=nbest, top_k=top_k), sources, len, device)
        looked = (_halving(lambda part: _attention(model, part, search.precision), list(zip(sources, found)),
                           lambda line: len(line[0]), device)
                  if attention else [[None] * len(hypotheses) for hypotheses in found])
        return [list(zip(hypotheses, seen)) for hypotheses, seen in zip(found, looked)]

    chunks = _chunks(tokenizers, lines, search.batch_size, chunk_lines, max_source_pieces, on_cut)
    for chunk, found in map_in_order(search_lines, chunks, lambda chunk: chunk.sources, workers):
        results: list[list[Translation]] = [[Translation("", 0.0, [])] for _ in range(chunk.size)]
        # one SentencePiece call per chunk: each call has a fixed cost (it starts threads)
        texts = iter(tokenizers.tgt.decode([hyp.tokens for batch in found for line in batch for hyp, _ in line]))
        for numbers, batch in zip(chunk.numbers, found):
            for number, line in zip(numbers, batch):
                results[number] = [Translation(next(texts), hyp.score, hyp.tokens, seen) for hyp, seen in line]
        yield from results


def _chunks(
    tokenizers: Tokenizers, lines: Iterator[str], batch_size: int, chunk_lines: int, max_source_pieces: int,
    on_cut: Callable[[int, int], None],
) -> Iterator[_Chunk]:
    """The input, `chunk_lines` at a time, encoded and cut into batches of lines of similar length (empty lines
    are in no batch)."""
    lines_before = 0
    while chunk := list(islice(lines, chunk_lines)):
        encoded = tokenizers.src.encode(chunk)
        for offset, ids in enumerate(encoded):
            if max_source_pieces and len(ids) > max_source_pieces:
                on_cut(lines_before + offset + 1, len(ids))
                encoded[offset] = ids[:max_source_pieces]
        lines_before += len(chunk)
        order = sorted((i for i, ids in enumerate(encoded) if ids), key=lambda i: len(encoded[i]))
        numbers = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        yield _Chunk(len(chunk), numbers, [[encoded[i] for i in batch] for batch in numbers])


def _halving(
    work: Callable[[list[Line]], list[Done]], lines: list[Line], pieces: Callable[[Line], int], device: torch.device,
) -> list[Done]:
    """`work` on a batch, one item per source line, split in two for as long as the device runs out of memory
    (long lines on a small GPU); the search, and the attention pass after it, each halve on their own.
    Every line is still translated, and its output does not depend on the batch it was in (up to rounding)."""
    try:
        return work(lines)
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()  # hand back the failed batch's blocks before trying smaller ones
        if len(lines) == 1:
            elsewhere = ", or translate on the CPU (--device cpu)" if device.type != "cpu" else ""
            raise OutOfMemory(f"out of memory on {device} translating a single line of {pieces(lines[0]):,} pieces: "
                              f"lower --max-source-pieces{elsewhere}") from None
        half = len(lines) // 2
        return _halving(work, lines[:half], pieces, device) + _halving(work, lines[half:], pieces, device)


def _attention(
    model: Seq2Seq, lines: Sequence[tuple[list[int], list[Hypothesis]]], precision: str,
) -> list[list[SourceAttention]]:
    """Each hypothesis's attention over its source (a line: its source and its hypotheses), all of a batch's
    hypotheses in one teacher-forced pass."""
    pairs = [(source, hyp.tokens) for source, hypotheses in lines for hyp in hypotheses]
    weights = iter(attention_batch(model, [src for src, _ in pairs], [out for _, out in pairs], precision=precision))
    return [[SourceAttention(source, next(weights)) for _ in hypotheses] for source, hypotheses in lines]
