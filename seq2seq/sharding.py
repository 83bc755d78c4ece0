"""Translating one file on several processes started by torchrun: each translates its own block of the lines, and
one ordered output appears, whole, equal to what one process writes.

Rank r takes the contiguous lines [r*n//N, (r+1)*n//N) of the n input lines (N processes), so a rank may have
none. Every rank reads the input file (on several machines it must be at the same path on each), renders its
block into memory, and the ranks agree on the outcome: if any rank failed, every rank raises that error and no
output is written; otherwise rank 0 gathers the blocks over the process group (no shared folder needed) and
writes them, in rank order, atomically. One process (no torchrun) is the `Shard` of `ALONE`: every method a
plain pass-through.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO

import torch.distributed as dist

from seq2seq import distributed
from seq2seq.distributed import ALONE, World
from seq2seq.errors import ConfigError, DataError, Seq2SeqError
from seq2seq.textio import STDIO, atomic_write, read_lines

BACKENDS = {"cpu": "gloo", "cuda": "nccl", "auto": "auto"}  # --device: the process group that suits it


@dataclass
class Shard:
    """This process's part of a translation: which lines it translates, and how its output joins the others'."""

    world: World = field(default_factory=lambda: ALONE)
    settled: bool = False  # whether the ranks have agreed on the outcome (`output` ends with that)

    @property
    def is_split(self) -> bool:
        return self.world.size > 1

    def device(self, setting: str) -> str:
        """Where to translate: `setting` for one process; with several, the device the process group gave this rank
        (its own GPU, cuda:LOCAL_RANK, made the current one; or the CPU)."""
        return self.world.device.type if self.is_split else setting

    def block(self, total: int) -> range:
        """The 0-based numbers of this rank's lines among `total`."""
        rank, size = self.world.rank, self.world.size
        return range(rank * total // size, (rank + 1) * total // size)

    def take(self, lines: Iterable[str], total: int | None) -> tuple[Iterable[str], int | None, int]:
        """This rank's `lines` (all of them, when alone), their count, and the 0-based number of the first."""
        if not self.is_split or total is None:
            return lines, total, 0
        mine = self.block(total)
        return list(lines)[mine.start : mine.stop], len(mine), mine.start

    def paired(self, path: str, total: int, input_name: str) -> list[str]:
        """This rank's block of a file that pairs line by line with the input (--prefix). Its length is checked
        whole first: a rank sees only its block, where a missing or extra line would shift or hide."""
        lines = read_lines(path)
        if len(lines) != total:
            raise DataError(f"{path} has {len(lines):,} lines but {input_name} has {total:,}: they must pair line by line")
        mine = self.block(total)
        return lines[mine.start : mine.stop]

    def sum(self, *counts: int) -> tuple[int, ...]:
        """Counts added up over ranks (lines, pieces), for the summary."""
        return tuple(round(value) for value in self.world.sum([float(count) for count in counts]))

    @contextmanager
    def output(self, path: str) -> Iterator[IO[str]]:
        """Where this rank (of several) writes its block. Once every rank is done: the first failure of any rank raised on every
        rank (named "rank R: ..." on the others) and nothing written; else the blocks in order in `path`, whole."""
        block = io.StringIO()
        failure: Seq2SeqError | None = None
        try:
            yield block
        except Seq2SeqError as error:
            failure = error
        self.settled = True
        self.world.everywhere(_raise_if_any, failure)
        blocks = self.world.gather(block.getvalue())
        self.world.on_main(_write_in_order, path, blocks)


@contextmanager
def joined(input_path: str, output_path: str, device: str, *, unsplittable: dict[str, bool]) -> Iterator[Shard]:
    """This process's Shard for the length of a translation: under torchrun (WORLD_SIZE > 1), a rank of the process
    group that suits `device` (gloo on the CPU, nccl with a GPU for each rank); otherwise the whole input.

    Split, the input must be a file that every rank can read, and the output a file that appears whole; and
    the options named in `unsplittable` (flag: given) must be absent.
    """
    if not _under_torchrun():
        yield Shard()
        return
    if STDIO in (input_path, output_path):
        raise ConfigError("translating on several processes (torchrun) needs --input FILE and --output FILE: "
                          "each process reads the input file, and one output file appears when all are done")
    given = [flag for flag, value in unsplittable.items() if value]
    if given:
        raise ConfigError(f"{given[0]} is not split across processes: run it without torchrun (one process)")
    if device not in BACKENDS:
        raise ConfigError(f"device {device}: expected one of {', '.join(BACKENDS)}")
    with distributed.join(BACKENDS[device], device) as world:
        shard = Shard(world)
        try:
            yield shard
        except Seq2SeqError as error:
            if shard.settled or world.size == 1:
                raise
            # Failed before its output (loading the model, reading a file): the others wait in `output` to agree.
            world.everywhere(_raise_if_any, error)


def _under_torchrun() -> bool:
    return (dist.is_available() and dist.is_initialized()) or os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1")


def _raise_if_any(failure: Seq2SeqError | None) -> None:
    if failure is not None:
        raise failure


def _write_in_order(path: str, blocks: Sequence[str]) -> None:
    with atomic_write(path) as file:
        for block in blocks:
            file.write(block)
