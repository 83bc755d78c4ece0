"""Text in, text out: tokenize, batch by length, encode, search, detokenize, restore input order.

Asked for, each output also carries its attention over the source (for pictures and alignments),
recomputed after the search by teacher forcing so that the search itself stays model-agnostic.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from itertools import islice, repeat
from typing import NamedTuple, TypeVar

import torch

from seq2seq import devices
from seq2seq.checkpoint import TrainedModel
from seq2seq.config import SearchConfig
from seq2seq.cores import CoreWatch, ThreadsChanged
from seq2seq.data import pad
from seq2seq.errors import ConfigError, OutOfMemory
from seq2seq.ensemble import Ensemble
from seq2seq.language_model import LanguageModel
from seq2seq.search import (Hypothesis, Narrow, OnStep, Sampler, StepFn, TopK, beam_search, greedy_search, ranking_score,
                            reorder, torch_top_k)
from seq2seq.textio import zip_lines
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizers
from seq2seq.workers import map_in_order

Line = TypeVar("Line")
Done = TypeVar("Done")

Model = TrainedModel | Ensemble  # all encode, decode_step and forward alike (attention_weights: with attention)
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
def inference(model: Model, precision: str) -> Iterator[None]:
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
    model: Model, sources: Sequence[Sequence[int]], search: SearchConfig, *, nbest: int = 1, top_k: TopK = torch_top_k,
    prefixes: Sequence[Sequence[int]] | None = None, numbers: Sequence[int] | None = None, on_step: OnStep | None = None,
) -> list[list[Hypothesis]]:
    """Search for a batch of encoded, non-empty sources (EOS appended here), on the model's device: the nbest
    best hypotheses of each, or with `search.sample`, nbest samples of each.

    `prefixes`: the target pieces each output must begin with (the length limit still holds, but always
    leaves room for the prefix and EOS);
    `numbers`: the sources' line numbers in the input, which choose their samples' random numbers (0, 1, ...
    if not given), so that a line's samples do not depend on the lines batched with it. `on_step`: see
    `beam_search`.
    """
    src, src_lens = on_device(model, pad([[*ids, EOS_ID] for ids in sources]))
    max_lens = length_limits(src_lens, search)
    forced = None
    if prefixes is not None and any(prefixes):
        forced, prefix_lens = on_device(model, pad(prefixes, value=-1))
        max_lens = torch.maximum(max_lens, prefix_lens + 1)
    rules = dict(bos_id=BOS_ID, eos_id=EOS_ID, min_length=search.min_length, banned=BARRED,
                 no_repeat_ngram=search.no_repeat_ngram, top_k=top_k, on_step=on_step)
    with inference(model, search.precision):
        memory, state = model.encode(src, src_lens)
        if search.sample:
            numbers = range(len(sources)) if numbers is None else numbers
            return _samples(model, memory, state, search, nbest=nbest, numbers=numbers, max_lens=max_lens,
                            forced=forced, rules=rules)
        if search.beam_size == 1 and nbest == 1:
            best = greedy_search(_step_fn(model, memory), state, batch_size=len(sources), max_lens=max_lens,
                                 forced=forced, narrow=_narrowing(model, memory), **rules)
            return [[hyp] for hyp in best]
        return beam_search(_step_fn(model, memory), state, batch_size=len(sources), beam_size=search.beam_size,
                           max_lens=max_lens, alpha=search.length_penalty, length_norm=search.length_norm,
                           nbest=nbest, forced=forced, narrow=_narrowing(model, memory), **rules)


def length_limits(src_lens: torch.Tensor, search: SearchConfig) -> torch.Tensor:
    """The most pieces each output may have, EOS included, from its source's length (EOS included)."""
    return (src_lens * search.max_length_ratio + search.max_length_constant).long().clamp(min=search.min_length + 1)


def _samples(
    model: Model, memory: tuple, state: tuple, search: SearchConfig, *, nbest: int, numbers: Sequence[int],
    max_lens: torch.Tensor, forced: torch.Tensor | None, rules: dict,
) -> list[list[Hypothesis]]:
    """`nbest` samples of each sentence: its memory and state repeated nbest times, each copy drawing its
    pieces from its own random numbers, seeded by (search.seed, line number, sample number)."""
    copies = torch.arange(len(numbers), device=max_lens.device).repeat_interleave(nbest)
    memory, state, max_lens = reorder(memory, copies), reorder(state, copies), max_lens[copies]
    steps = int(max_lens.max())
    uniforms = torch.zeros(len(copies), steps)
    for row, (number, sample) in enumerate((number, sample) for number in numbers for sample in range(nbest)):
        length = int(max_lens[row])  # the line's own limit, not the batch's: its numbers must not depend on the batch
        uniforms[row, :length] = torch.rand(length, generator=torch.Generator().manual_seed(
            sample_seed(search.seed, number, sample)))
    sampler = Sampler(uniforms.to(max_lens.device), search.temperature, search.top_k, search.top_p)
    found = greedy_search(_step_fn(model, memory), state, batch_size=len(copies), max_lens=max_lens,
                          forced=forced[copies] if forced is not None else None, narrow=_narrowing(model, memory),
                          choose=sampler, **rules)
    return [found[start : start + nbest] for start in range(0, len(found), nbest)]


def sample_seed(seed: int, line: int, sample: int) -> int:
    """The seed of one sample's random numbers: a hash of the user's seed, the line and the sample number."""
    digest = hashlib.blake2b(f"{seed} {line} {sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # torch seeds are below 2**63


def attention_batch(
    model: Model, sources: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]], *, precision: str = "fp32",
) -> list[torch.Tensor]:
    """The attention of each output over its source: (len(output) + 1, len(source) + 1) weights each.

    Recomputed by teacher forcing through the model's own decoder step, so the rows are the weights
    the search's steps used for these outputs (up to rounding between batch shapes).
    """
    src, src_lens = on_device(model, pad([[*ids, EOS_ID] for ids in sources]))
    tgt_in, _ = on_device(model, pad([[BOS_ID, *ids] for ids in outputs]))
    with inference(model, precision):
        weights = model.attention_weights(src, src_lens, tgt_in).float().cpu()  # (batch, tgt_len, src_len)
    return [weights[row, : len(output) + 1, : len(source) + 1] for row, (source, output) in enumerate(zip(sources, outputs))]


def on_device(model: Model, padded: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
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


def is_language_model(model: Model) -> bool:
    """Whether `model` reads no source: a language model, or an ensemble of them."""
    return isinstance(model.members[0] if isinstance(model, Ensemble) else model, LanguageModel)


def _step_fn(model: Model, memory: tuple) -> StepFn:
    """The search's view of the model: next-token log-probabilities for the current tokens and state."""
    return lambda tokens, state: model.decode_step(tokens, state, memory)


def _narrowing(model: Model, memory: tuple) -> Narrow:
    """How the search drops done sentences: the step over the memory of the sentences still searched."""
    return lambda sentences: _step_fn(model, reorder(memory, sentences))


def translate(
    model: Model, tokenizers: Tokenizers, lines: Iterable[str], search: SearchConfig, *,
    nbest: int = 1, chunk_lines: int | None = None, attention: bool = False, max_source_pieces: int = 0,
    on_cut: Callable[[int, int], None] = lambda number, pieces: None, workers: int = 1, top_k: TopK = torch_top_k,
    prefixes: Iterable[str] | None = None, on_long_line: Callable[[LongLine], None] = lambda line: None,
    on_step: OnStep | None = None, threads: int = 0, on_threads: Callable[[ThreadsChanged], None] = lambda change: None,
) -> Iterator[list[Translation]]:
    """Yield the nbest translations of each line (its samples, with `search.sample`), in input order, as soon
    as its chunk is done.

    The pipeline alone, for a model already prepared (`seq2seq.translator.Translator` prepares one and
    checks the options). Lines are read `chunk_lines` at a time (default: 8 batches), sorted by length
    inside the chunk so that batches carry little padding, and put back in order; memory stays flat
    however long the input. An empty line gives an empty translation without calling the model. With
    `attention`, every hypothesis carries its `SourceAttention`.

    A line longer than `max_source_pieces` (0 = no limit) is translated from its first pieces only,
    after `on_cut(line_number, pieces)`: decoding time grows with the source, so one 100,000-character
    line could stall a whole file; cut, it still gets its one output line. A line of LONG_LINE pieces or
    more is announced before its search starts (`on_long_line`, with the steps and memory it may need),
    and its batch's search calls `on_step(steps done, most steps)` before each step (when it runs in
    this process: not in a worker's).
    `prefixes`, one per line (a DataError if there are more or fewer): text each output must begin with,
    as target pieces; the score covers the whole output. An empty prefix forces nothing. A language model
    (`is_language_model`) reads no source: each input line is the prompt its output begins with, empty ones too.
    With `workers` above 1, that many forked processes search the batches side by side on the CPU
    (`seq2seq.workers`): the results are the same as one process's, up to rounding, and a chunk comes
    out once the next one has been read and handed to them.
    `threads`: torch's CPU threads for each process that searches (0 = with one process, torch's count, fewer while
    other programs take cores (`seq2seq.cores`; `on_threads` hears of each change); with workers, the cores shared
    among them). The count is put back as it was at the end.
    """
    # checked now, not when the first line is read
    no_attention = "a language model" if is_language_model(model) else "model.attention = none"
    if search.coverage_penalty and model.attention is None:
        raise ConfigError(f"this model has no attention ({no_attention}): the coverage penalty needs it")
    if attention and model.attention is None:
        raise ConfigError(f"this model has no attention ({no_attention}): there is no attention "
                          "to draw or align (--attention-plot, --alignment)")
    if search.precision == "bf16":
        devices.require_bf16_units(devices.of(model))
    if is_language_model(model):
        if prefixes is not None:
            raise ConfigError("a language model's input lines are its prompts, the text each output begins with: "
                              "give them as the input, not as prefixes")
        pairs: Iterable[tuple[str, str]] = (("", prompt) for prompt in lines)
    else:
        pairs = zip_lines(lines, "input lines", prefixes, "prefixes") if prefixes is not None else zip(lines, repeat(""))
    return _translate(model, tokenizers, pairs, search, nbest=nbest, chunk_lines=chunk_lines or 8 * search.batch_size,
                      attention=attention, max_source_pieces=max_source_pieces, on_cut=on_cut, workers=workers,
                      top_k=top_k, on_long_line=on_long_line, on_step=on_step, threads=threads, on_threads=on_threads)


LONG_LINE = 1_000  # source pieces from which a line is announced before its search (`LongLine`) and followed step by step


class LongLine(NamedTuple):
    """A line whose search will take a while (LONG_LINE pieces or more), announced before it starts: decoding
    time and memory grow with the source, and a 1 MB line runs for many minutes."""

    number: int   # 1-based, in the input
    pieces: int   # source pieces searched
    steps: int    # the most decoder steps its search can take
    memory: int   # about how many bytes its search needs at the peak, beyond the model's own


def search_memory(model: Model, pieces: int, search: SearchConfig, *, rows: int) -> int:
    """About the peak bytes of searching one line of `pieces` source pieces with `rows` hypotheses (beams or
    samples): per model, the encoder's activations (pieces x (embedding + 6 x hidden) floats, its outputs and
    keys among them) and, at every step, the attention's scores over the source for every row (pieces x
    hidden x rows for Bahdanau's, whose tanh layer runs over every source position); then the search's
    history of output pieces. Against peak memory measured on lines of 4,786 and 23,185 pieces
    (bench/README.md, "Long lines"): within 10%."""
    steps = int(length_limits(torch.tensor([pieces + 1]), search))
    members = model.members if isinstance(model, Ensemble) else [model]
    total = 0
    for member in members:
        width = member.hidden_dim if member.attention is not None and member.attention.kind == "bahdanau" else 4
        total += 4 * pieces * (member.src_embed.embedding_dim + 6 * member.hidden_dim) + 4 * rows * pieces * width
    return total + 16 * rows * steps


class _Source(NamedTuple):
    """One input line, encoded for the search."""

    ids: list[int]      # its pieces
    prefix: list[int]   # the target pieces its output must begin with
    line: int           # its 0-based number in the input, which chooses its samples' random numbers


class _Chunk(NamedTuple):
    """Lines read together: how many, and their batches (each line's number in the chunk, and its source)."""

    size: int
    numbers: list[list[int]]
    sources: list[list[_Source]]


BatchResult = list[list[tuple[Hypothesis, SourceAttention | None]]]  # per line of a batch, its hypotheses


def _translate(
    model: Model, tokenizers: Tokenizers, lines: Iterator[tuple[str, str]], search: SearchConfig, *,
    nbest: int, chunk_lines: int, attention: bool, max_source_pieces: int, on_cut: Callable[[int, int], None],
    workers: int, top_k: TopK, on_long_line: Callable[[LongLine], None], on_step: OnStep | None, threads: int,
    on_threads: Callable[[ThreadsChanged], None],
) -> Iterator[list[Translation]]:
    """`translate`'s loop, once its arguments are checked."""
    device = devices.of(model)
    in_process = device.type == "cpu" and workers <= 1
    watch = CoreWatch(on_threads, pinned=threads) if in_process else None
    covering = search.coverage_penalty > 0 and not search.sample  # re-rank the whole beam by coverage
    rows = nbest if search.sample else search.beam_size
    parent = os.getpid()  # a worker inherits this loop through fork; it must not report progress itself

    def announce(number: int, pieces: int) -> None:
        steps = int(length_limits(torch.tensor([pieces + 1]), search))
        on_long_line(LongLine(number, pieces, steps, search_memory(model, pieces, search, rows=rows)))

    def find(part: list[_Source]) -> list[list[Hypothesis]]:
        prefixes = [source.prefix for source in part]
        long = on_step is not None and os.getpid() == parent and max(len(source.ids) for source in part) >= LONG_LINE
        return search_batch(model, [source.ids for source in part], search, nbest=search.beam_size if covering else nbest,
                            top_k=top_k, prefixes=prefixes if any(prefixes) else None,
                            numbers=[source.line for source in part], on_step=on_step if long else None)

    def search_lines(sources: list[_Source]) -> BatchResult:
        if watch and os.getpid() == parent:
            watch.look()
        found = halving(find, sources, lambda source: len(source.ids), device)
        looked = (halving(lambda part: _attention(model, part, search.precision),
                           [(source.ids, hypotheses) for source, hypotheses in zip(sources, found)],
                           lambda line: len(line[0]), device)
                  if attention or covering else [[None] * len(hypotheses) for hypotheses in found])
        lines = [list(zip(hypotheses, seen)) for hypotheses, seen in zip(found, looked)]
        if covering:
            lines = [by_coverage(line, search)[:nbest] for line in lines]
        return lines if attention or not covering else [[(hyp, None) for hyp, _ in line] for line in lines]

    chunks = _chunks(tokenizers, lines, search.batch_size, chunk_lines, max_source_pieces, on_cut, announce,
                     search_empty=is_language_model(model))
    counted: AbstractContextManager[CoreWatch | None] = watch or nullcontext()
    with counted:
        for chunk, found in map_in_order(search_lines, chunks, lambda chunk: chunk.sources, workers, threads):
            results: list[list[Translation]] = [[Translation("", 0.0, [])] for _ in range(chunk.size)]
            # one SentencePiece call per chunk: each call has a fixed cost (it starts threads)
            texts = iter(tokenizers.tgt.decode([hyp.tokens for batch in found for line in batch for hyp, _ in line]))
            for numbers, batch in zip(chunk.numbers, found):
                for number, line in zip(numbers, batch):
                    results[number] = [Translation(next(texts), hyp.score, hyp.tokens, seen) for hyp, seen in line]
            yield from results


def by_coverage(line: list[tuple[Hypothesis, SourceAttention | None]], search: SearchConfig,
                ) -> list[tuple[Hypothesis, SourceAttention | None]]:
    """A line's hypotheses ranked by their length-penalised score plus GNMT's coverage penalty,
    beta * sum over source pieces of log(min(attention received, 1)): an output that left part of the
    source unread ranks lower. The reported score stays the model's log-probability."""
    def rank(hypothesis: tuple[Hypothesis, SourceAttention | None]) -> float:
        hyp, seen = hypothesis
        assert seen is not None
        ranked = ranking_score(torch.tensor(hyp.score), torch.tensor(len(hyp.tokens) + 1.0),
                               alpha=search.length_penalty, length_norm=search.length_norm)
        received = seen.weights[:, :-1].sum(dim=0)  # per source piece, over all output steps (its EOS left out)
        return float(ranked + search.coverage_penalty * received.clamp(min=1e-6, max=1.0).log().sum())

    return sorted(line, key=rank, reverse=True)


def _chunks(
    tokenizers: Tokenizers, lines: Iterator[tuple[str, str]], batch_size: int, chunk_lines: int, max_source_pieces: int,
    on_cut: Callable[[int, int], None], on_long: Callable[[int, int], None], search_empty: bool = False,
) -> Iterator[_Chunk]:
    """The input (line, prefix pairs), `chunk_lines` at a time, encoded and cut into batches of lines of similar
    length (empty lines are in no batch, unless `search_empty`: a language model's, all empty, continue their
    prefixes). `on_cut` and `on_long` hear of lines cut or long: (number, pieces)."""
    lines_before = 0
    while chunk := list(islice(lines, chunk_lines)):
        encoded = tokenizers.src.encode([line for line, _ in chunk])
        given = [prefix for _, prefix in chunk]
        # each SentencePiece call has a fixed cost: none for a chunk without prefixes (the usual case)
        prefixes = tokenizers.tgt.encode(given) if any(given) else [[] for _ in chunk]
        for offset, ids in enumerate(encoded):
            if max_source_pieces and len(ids) > max_source_pieces:
                on_cut(lines_before + offset + 1, len(ids))
                encoded[offset] = ids[:max_source_pieces]
            if len(encoded[offset]) >= LONG_LINE:
                on_long(lines_before + offset + 1, len(encoded[offset]))
        order = sorted((i for i, ids in enumerate(encoded) if ids or search_empty),
                       key=lambda i: (len(encoded[i]), len(prefixes[i])))
        numbers = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        yield _Chunk(len(chunk), numbers, [[_Source(encoded[i], prefixes[i], lines_before + i) for i in batch]
                                           for batch in numbers])
        lines_before += len(chunk)


def halving(
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
        return halving(work, lines[:half], pieces, device) + halving(work, lines[half:], pieces, device)


def _attention(
    model: Model, lines: Sequence[tuple[list[int], list[Hypothesis]]], precision: str,
) -> list[list[SourceAttention]]:
    """Each hypothesis's attention over its source (a line: its source and its hypotheses), all of a batch's
    hypotheses in one teacher-forced pass."""
    pairs = [(source, hyp.tokens) for source, hypotheses in lines for hyp in hypotheses]
    weights = iter(attention_batch(model, [src for src, _ in pairs], [out for _, out in pairs], precision=precision))
    return [[SourceAttention(source, next(weights)) for _ in hypotheses] for source, hypotheses in lines]
