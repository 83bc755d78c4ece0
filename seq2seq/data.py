"""Parallel text -> encoded examples -> padded batches under a token budget, bucketed by length."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from seq2seq.errors import DataError
from seq2seq.textio import read_lines
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizers


class Example(NamedTuple):
    src: list[int]      # source pieces + EOS
    tgt: list[int]      # target pieces (no BOS/EOS)


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
    src_lines: Sequence[str], tgt_lines: Sequence[str], tokenizers: Tokenizers, *, max_length: int
) -> tuple[list[Example], FilterStats]:
    """Encode a corpus, skipping empty and over-long pairs (counted, so the user can be told)."""
    src_ids = tokenizers.src.encode(src_lines)
    tgt_ids = tokenizers.tgt.encode(tgt_lines)
    examples, empty, too_long = [], 0, 0
    for src, tgt in zip(src_ids, tgt_ids, strict=True):
        if not src or not tgt:
            empty += 1
        elif max_length and max(len(src), len(tgt)) > max_length:
            too_long += 1
        else:
            examples.append(Example(src + [EOS_ID], tgt))
    return examples, FilterStats(kept=len(examples), empty=empty, too_long=too_long)


def pad(sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to a (batch, max_len) tensor; returns it with the true lengths."""
    lens = torch.tensor([len(seq) for seq in sequences], dtype=torch.long)
    padded = torch.full((len(sequences), int(lens.max())), PAD_ID, dtype=torch.long)
    for row, seq in enumerate(sequences):
        padded[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return padded, lens


def collate(examples: Sequence[Example]) -> Batch:
    src, src_lens = pad([ex.src for ex in examples])
    tgt_in, _ = pad([[BOS_ID, *ex.tgt] for ex in examples])
    tgt_out, _ = pad([[*ex.tgt, EOS_ID] for ex in examples])
    return Batch(src, src_lens, tgt_in, tgt_out)


def plan_batches(examples: Sequence[Example], *, batch_tokens: int, generator: torch.Generator) -> list[list[int]]:
    """Group example indices into batches of similar lengths, then shuffle the batch order.

    A batch's cost is its padded source plus target positions; similar lengths sit together
    (sorted by length with a random tie-break), so little of the budget is spent on padding.
    The `generator` alone decides the order, so a seed and an epoch number recreate it exactly.
    """
    noise = torch.rand(len(examples), generator=generator)
    src_lens, tgt_lens = [len(ex.src) for ex in examples], [len(ex.tgt) for ex in examples]
    # In order of (source length, target length, noise): stable sorts from the last key to the first, the
    # order that sorting those tuples gives, in 2 s instead of 5 for 1M examples (bench/README.md).
    order = noise.argsort(stable=True)
    for key in (torch.tensor(tgt_lens), torch.tensor(src_lens)):
        order = order[key[order].argsort(stable=True)]
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


def share(batch: Sequence[int], *, rank: int, ranks: int) -> list[int]:
    """Rank `rank`'s part of a planned batch when `ranks` processes train on it together.

    A batch's examples sit in length order, so every ranks-th one from `rank` on gives each rank a part of
    about the same size and lengths. A part is empty when the batch holds fewer examples than there are ranks.
    """
    return list(batch[rank::ranks])
