"""Parallel text -> encoded examples -> padded batches under a token budget, bucketed by length."""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar, overload

import torch

from seq2seq.errors import DataError
from seq2seq.textio import read_lines
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizers


Shared = TypeVar("Shared")  # what `share` splits: a batch's example numbers, or its examples

ENCODED_AT_ONCE = 100_000  # lines per SentencePiece call in `encode_pairs`; their lists are packed before the next


class Example(NamedTuple):
    src: list[int]      # source pieces + EOS
    tgt: list[int]      # target pieces (no BOS/EOS)


class Examples(Sequence[Example]):
    """Encoded pairs, packed: each side's ids in one array of 32-bit ints, cut where each pair ends.

    As lists of Python ints, 1M pairs of Multi30k-like text took 1.0 GB (36 bytes an id); packed, they take
    4 bytes an id. Indexing gives an Example (lists) back, for the pairs of one batch.
    """

    def __init__(self) -> None:
        self._src, self._tgt = array("i"), array("i")
        self._src_ends, self._tgt_ends = array("q", [0]), array("q", [0])

    def append(self, src: Sequence[int], tgt: Sequence[int]) -> None:
        self._src.extend(src)
        self._src_ends.append(len(self._src))
        self._tgt.extend(tgt)
        self._tgt_ends.append(len(self._tgt))

    def __len__(self) -> int:
        return len(self._src_ends) - 1

    @overload
    def __getitem__(self, index: int) -> Example: ...
    @overload
    def __getitem__(self, index: slice) -> list[Example]: ...
    def __getitem__(self, index: int | slice) -> Example | list[Example]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"example {index} of {len(self)}")
        index %= len(self)
        return Example(self._src[self._src_ends[index] : self._src_ends[index + 1]].tolist(),
                       self._tgt[self._tgt_ends[index] : self._tgt_ends[index + 1]].tolist())

    def lengths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every pair's source and target length (int64), computed from the ends without unpacking."""
        return (torch.frombuffer(self._src_ends, dtype=torch.int64).diff(),
                torch.frombuffer(self._tgt_ends, dtype=torch.int64).diff())


class Batch(NamedTuple):
    src: torch.Tensor       # (batch, src_len) padded with PAD_ID
    src_lens: torch.Tensor  # (batch,)
    tgt_in: torch.Tensor    # (batch, tgt_len): BOS + y
    tgt_out: torch.Tensor   # (batch, tgt_len): y + EOS

    @property
    def tgt_tokens(self) -> int:
        return int((self.tgt_out != PAD_ID).sum())

    def to(self, device: torch.device) -> Batch:
        return Batch(*(tensor.to(device) for tensor in self))


@dataclass(frozen=True)
class FilterStats:
    kept: int
    empty: int      # pairs with an empty side
    too_long: int   # pairs with a side over max_length pieces


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> tuple[list[str], list[str]]:
    """Both sides of a parallel corpus; refuses files of different lengths (naming both) and empty ones."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; parallel files must have equal line counts"
        )
    if not src:
        raise DataError(f"{src_path} and {tgt_path} are empty: no sentence pairs to read")
    return src, tgt


def encode_pairs(
    src_lines: Sequence[str] | None, tgt_lines: Sequence[str], tokenizers: Tokenizers, *, max_length: int,
    kept: list[int] | None = None,
) -> tuple[Examples, FilterStats]:
    """Encode a corpus, skipping empty and over-long pairs (counted, so the user can be told). `kept`, when given,
    receives the line number of each pair kept, in order (the text that subword sampling cuts anew). With no
    `src_lines` (a language model's text), every source is empty: the EOS alone.

    SentencePiece gets ENCODED_AT_ONCE lines at a time, so that only that many lines' lists of ints
    exist at once: the rest is packed (see `Examples`).
    """
    examples, empty, too_long = Examples(), 0, 0
    for start in range(0, len(tgt_lines), ENCODED_AT_ONCE):
        tgt_ids = tokenizers.tgt.encode(tgt_lines[start : start + ENCODED_AT_ONCE])
        src_ids = tokenizers.src.encode(src_lines[start : start + ENCODED_AT_ONCE]) if src_lines is not None \
            else [[] for _ in tgt_ids]
        for line, (src, tgt) in enumerate(zip(src_ids, tgt_ids, strict=True), start):
            if (not src and src_lines is not None) or not tgt:
                empty += 1
            elif max_length and max(len(src), len(tgt)) > max_length:
                too_long += 1
            else:
                src.append(EOS_ID)
                examples.append(src, tgt)
                if kept is not None:
                    kept.append(line)
    return examples, FilterStats(kept=len(examples), empty=empty, too_long=too_long)


def pad(sequences: Sequence[Sequence[int]], value: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with `value` to a (batch, max_len) tensor; returns it with the true lengths."""
    lens = torch.tensor([len(seq) for seq in sequences], dtype=torch.long)
    padded = torch.full((len(sequences), int(lens.max())), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        padded[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return padded, lens


def collate(examples: Sequence[Example]) -> Batch:
    src, src_lens = pad([ex.src for ex in examples])
    tgt_in, _ = pad([[BOS_ID, *ex.tgt] for ex in examples])
    tgt_out, _ = pad([[*ex.tgt, EOS_ID] for ex in examples])
    return Batch(src, src_lens, tgt_in, tgt_out)


def plan_batches(examples: Examples, *, batch_tokens: int, generator: torch.Generator) -> list[list[int]]:
    """Group example indices into batches of similar lengths, then shuffle the batch order.

    A batch's cost is its padded source plus target positions; similar lengths sit together
    (sorted by length with a random tie-break), so little of the budget is spent on padding.
    The `generator` alone decides the order, so a seed and an epoch number recreate it exactly.
    """
    noise = torch.rand(len(examples), generator=generator)
    src_lengths, tgt_lengths = examples.lengths()
    # In order of (source length, target length, noise): stable sorts from the last key to the first, the
    # order that sorting those tuples gives, in 2 s instead of 5 for 1M examples (bench/README.md).
    order = noise.argsort(stable=True)
    for key in (tgt_lengths, src_lengths):
        order = order[key[order].argsort(stable=True)]
    src_lens, tgt_lens = src_lengths.tolist(), tgt_lengths.tolist()
    batches: list[list[int]] = []
    current: list[int] = []
    longest_src = longest_tgt = 0
    for index in order.tolist():
        src_len, tgt_len = src_lens[index], tgt_lens[index] + 1
        grown_src, grown_tgt = max(longest_src, src_len), max(longest_tgt, tgt_len)
        if current and (len(current) + 1) * (grown_src + grown_tgt) > batch_tokens:
            batches.append(current)
            current, grown_src, grown_tgt = [], src_len, tgt_len
        current.append(index)
        longest_src, longest_tgt = grown_src, grown_tgt
    if current:
        batches.append(current)
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def share(batch: Sequence[Shared], *, rank: int, ranks: int) -> list[Shared]:
    """Rank `rank`'s part of a planned batch when `ranks` processes train on it together.

    A batch's examples sit in length order, so every ranks-th one from `rank` on gives each rank a part of
    about the same size and lengths. A part is empty when the batch holds fewer examples than there are ranks.
    """
    return list(batch[rank::ranks])
