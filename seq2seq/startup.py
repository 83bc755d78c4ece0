"""How a training run starts, one path for `train` and for its dry run (`seq2seq.inspection`).

Check the settings, the machine and the run folder; read the data; set up the tokenizers (from the
resumed run, the cache, or trained); encode; build the model. Everything a real run would stop on is
found here, before the first update, and a dry run finds the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from seq2seq import checkpoint, devices
from seq2seq.config import Config, validation_metrics
from seq2seq.data import Examples, FilterStats, encode_pairs, read_parallel
from seq2seq.distributed import World
from seq2seq.errors import ConfigError, DataError
from seq2seq.events import Preparing, Report
from seq2seq.metrics import check_references
from seq2seq.model import Seq2Seq
from seq2seq.runfolder import Resumed, RunFolder
from seq2seq.textio import display_name
from seq2seq.tokenizer import TokenizerCache, Tokenizers, train_tokenizers

UNSEEN_SHOWN = 10  # the most frequent unseen characters listed, per side

Unseen = list[tuple[str, int]]  # characters and how often they occur, most frequent first


@dataclass(frozen=True)
class Start:
    """A run ready for its first update."""

    resumed: Resumed | None      # last.pt's model and loop state, when the run continues
    tokenizers: Tokenizers
    model: Seq2Seq               # on the world's device
    examples: Examples           # the training pairs kept
    stats: FilterStats           # what encoding kept and skipped
    train_lines: int
    valid_examples: Examples
    valid_stats: FilterStats
    valid_src: list[str]
    valid_tgt: list[str]
    unseen: tuple[Unseen, Unseen] | None  # validation characters absent from training (source, target), if asked


def start_run(
    cfg: Config, folder: RunFolder | None, world: World, *, overwrite: bool = False, resume: bool = False,
    report: Report = lambda event: None, tokenizer_cache: TokenizerCache | None = None, create: bool = True,
    count_unseen: bool = False,
) -> Start:
    """Check, read, tokenize, encode and build, reporting `Preparing` stages; with `create`, rank 0 makes the
    folder (and writes config.toml) once everything has been read. With `count_unseen`, also list the
    validation characters that the training text lacks (a pass over the whole text: the dry run's report)."""
    data = cfg.data
    if not (data.source and data.target and data.valid_source and data.valid_target):
        raise ConfigError("training needs data.source, data.target, data.valid_source and data.valid_target")
    if "bf16" in (cfg.train.precision, cfg.search.precision):  # search's too, or validation would stop the run
        world.everywhere(devices.require_bf16_units, world.device)
    # Every rank checks the folder and reads the data, writing nothing; an error on any rank stops them all.
    resumed = world.everywhere(folder.check, cfg, overwrite=overwrite, resume=resume, world_size=world.size) if folder else None
    src_lines, tgt_lines, valid_src, valid_tgt = world.everywhere(_read, cfg)
    check_references(validation_metrics(cfg.train), [(display_name(data.valid_target), valid_tgt)])
    if create and folder:
        world.on_main(folder.create, cfg, overwrite=overwrite)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    if not resumed:
        report(Preparing("tokenizer", len(src_lines)))
    try:
        tokenizers = (resumed.checkpoint.tokenizers if resumed
                      else world.on_main(train_tokenizers, src_lines, tgt_lines, cfg.tokenizer, tokenizer_cache))
    except DataError as error:  # the text itself: name the files it came from
        raise DataError(f"{data.source} and {data.target}: {error}") from None
    report(Preparing("encoding", len(src_lines)))
    examples, stats = encode_pairs(src_lines, tgt_lines, tokenizers, max_length=data.max_length)
    unseen = (unseen_characters(src_lines, valid_src), unseen_characters(tgt_lines, valid_tgt)) if count_unseen else None
    train_lines = len(src_lines)
    del src_lines, tgt_lines  # never read again; 1M pairs of text hold 0.3 GB
    if not examples:
        raise DataError(f"{data.source}: no usable training pairs ({stats.empty} empty, {stats.too_long} too long)")
    valid_examples, valid_stats = encode_pairs(valid_src, valid_tgt, tokenizers, max_length=0)
    model = (resumed.checkpoint.model if resumed else checkpoint.build_model(cfg, tokenizers)).to(world.device)
    return Start(resumed, tokenizers, model, examples, stats, train_lines, valid_examples, valid_stats, valid_src,
                 valid_tgt, unseen)


def _read(cfg: Config) -> tuple[list[str], list[str], list[str], list[str]]:
    src_lines, tgt_lines = read_parallel(cfg.data.source, cfg.data.target)
    valid_src, valid_tgt = read_parallel(cfg.data.valid_source, cfg.data.valid_target)
    return src_lines, tgt_lines, valid_src, valid_tgt


def unseen_characters(train_lines: Sequence[str], valid_lines: Sequence[str]) -> Unseen:
    """Characters of the validation lines that no training line holds, most frequent first: what will become <unk>."""
    seen = set("".join(train_lines))
    counts = Counter(char for char in "".join(valid_lines) if char not in seen and not char.isspace())
    return counts.most_common(UNSEEN_SHOWN)
