"""What a training run would do, found out without doing it (`seq2seq train --dry-run`).

The data is read and checked as training reads it, the tokenizer(s) trained, the model built and a
few real updates timed on real batches; then all of it is dropped and nothing is written. Problems
a real run would stop on (files of different lengths, no usable pairs, a run folder in the way)
raise the same errors here, before anyone waits for them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from seq2seq import devices
from seq2seq.config import Config, TrainConfig
from seq2seq.data import Examples, FilterStats
from seq2seq.distributed import World
from seq2seq.checkpoint import TrainedModel
from seq2seq.optim import build_optimizer
from seq2seq.runfolder import RunFolder
from seq2seq.startup import start_run
from seq2seq.timebatched import swap_in_step_linears
from seq2seq.tokenizer import UNK_ID, Tokenizer, TokenizerCache
from seq2seq.training import epoch_plan, split, update


@dataclass(frozen=True)
class TrainingPreview:
    """Facts about a run that has not happened: data, vocabulary, model size and speed on this machine."""

    train_lines: int
    valid_lines: int
    train: FilterStats                       # what training keeps and skips (empty side; over data.max_length)
    valid_empty: int                         # validation pairs with an empty side (no loss; still scored by BLEU)
    src_vocab: int
    tgt_vocab: int
    joint: bool
    src_unknown: float                       # share of the validation source's pieces that are <unk>
    tgt_unknown: float                       # the same for the validation target
    src_unseen: list[tuple[str, int]]        # validation source characters absent from the training source, most frequent first
    tgt_unseen: list[tuple[str, int]]
    parameters: int
    batches_per_epoch: int                   # one for each update (of train.accumulate micro-batches)
    timed_updates: int                       # real updates timed (after one untimed warm-up)
    seconds_per_update: float                # their mean, on batches spread over the epoch's range of sizes
    resumed_step: int                        # the step a resumed run would continue after; 0 for a new run
    started_from: str | None                 # the model file a fine-tuned run starts from

    @property
    def seconds_per_epoch(self) -> float:
        """Updates only: validation (loss and the translations' scores) comes on top, every train.valid_every updates."""
        return self.seconds_per_update * self.batches_per_epoch


def preview_training(
    cfg: Config, out_dir: str | Path | None = None, *, overwrite: bool = False, resume: bool = False, timed_updates: int = 5,
    tokenizer_cache: TokenizerCache | None = None,
) -> TrainingPreview:
    """Start the run as `train` would (`seq2seq.startup`: every check, the folder's too when `out_dir` is
    given) and measure what can be measured; write nothing (give a `tokenizer_cache` that is not writable to
    look tokenizers up there)."""
    folder = RunFolder(out_dir) if out_dir is not None else None
    world = World(device=devices.resolve(cfg.train.device))
    begun = start_run(cfg, folder, world, overwrite=overwrite, resume=resume, tokenizer_cache=tokenizer_cache, create=False,
                  count_unseen=True)
    assert begun.unseen is not None, "asked for"
    tokenizers, examples = begun.tokenizers, begun.examples
    plan = epoch_plan(examples, cfg.train, epoch=1, ranks=1)  # how many batches depends on the lengths alone
    seconds = _time_updates(begun.model, examples, plan, cfg.train, timed_updates, world)
    return TrainingPreview(
        train_lines=begun.train_lines, valid_lines=len(begun.valid_src), train=begun.stats,
        valid_empty=begun.valid_stats.empty, src_vocab=tokenizers.src.vocab_size, tgt_vocab=tokenizers.tgt.vocab_size,
        joint=tokenizers.joint, src_unknown=unknown_share(tokenizers.src, begun.valid_src),
        tgt_unknown=unknown_share(tokenizers.tgt, begun.valid_tgt), src_unseen=begun.unseen[0], tgt_unseen=begun.unseen[1],
        parameters=sum(param.numel() for param in begun.model.parameters()), batches_per_epoch=len(plan),
        timed_updates=min(timed_updates, len(plan)), seconds_per_update=seconds,
        resumed_step=begun.resumed.state.step if begun.resumed else 0,
        started_from=begun.started_from["file"] if begun.started_from and not begun.resumed else None,
    )


def unknown_share(tokenizer: Tokenizer, lines: Sequence[str]) -> float:
    """The share of the pieces of `lines` that the tokenizer can only call <unk> (0.0 for no pieces)."""
    encoded = tokenizer.encode(lines)
    pieces = sum(len(ids) for ids in encoded)
    return sum(ids.count(UNK_ID) for ids in encoded) / pieces if pieces else 0.0


def _time_updates(
    model: TrainedModel, examples: Examples, plan: list[list[int]], settings: TrainConfig, count: int, world: World,
) -> float:
    """Mean seconds of `count` real updates on batches spread from the epoch's smallest to its largest.

    Batch cost varies with sentence length (a recurrent decoder runs one step per target position), so
    the first few batches of a shuffled epoch could all be short; quantiles of the cost cover the range.
    One untimed update first pays for first-call allocations. The model and a fresh optimizer are
    changed by these updates and then dropped.
    """
    pieces = torch.add(*examples.lengths()).tolist()  # per pair, without unpacking every pair of the corpus

    def cost(batch: list[int]) -> int:
        return len(batch) * max(pieces[i] for i in batch)

    by_cost = sorted(plan, key=cost)
    count = min(count, len(by_cost))
    chosen = [by_cost[round(k * (len(by_cost) - 1) / max(count - 1, 1))] for k in range(count)]
    swap_in_step_linears(model).train()  # as training does
    optimizer = build_optimizer(model.parameters(), settings)
    update(model, optimizer, split([examples[i] for i in by_cost[len(by_cost) // 2]], settings, world)[0], settings)
    start = time.perf_counter()
    for batch in chosen:
        update(model, optimizer, split([examples[i] for i in batch], settings, world)[0], settings)
    return (time.perf_counter() - start) / max(count, 1)
