"""How a training run starts, one path for `train` and for its dry run (`seq2seq.inspection`).

Check the settings, the machine and the run folder; read the data; set up the tokenizers (from the
resumed run, from the model file a fine-tuned run starts from, from the cache, or trained); encode; build
the model (new, or with the resumed run's or the fine-tuned model's weights). Everything a real run would
stop on is found here, before the first update, and a dry run finds the same.

Fine-tuning (train.init_from) starts a new run from a model file: its weights and tokenizers, with a new
optimizer, schedule, step count and best score. The model keeps its architecture and vocabulary: a setting
that would change them is refused, naming it; dropout, tokenizer.sampling_alpha and training settings may
change. Resuming a fine-tuned run continues it from its own last.pt and reads the model file no more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seq2seq import checkpoint, devices
from seq2seq.checkpoint import TrainedModel
from seq2seq.config import Config, changed_setting, validation_metrics
from seq2seq.data import Examples, FilterStats, encode_pairs, read_parallel
from seq2seq.distributed import World
from seq2seq.errors import ConfigError, DataError
from seq2seq.events import Preparing, Report
from seq2seq.metrics import check_references
from seq2seq.runfolder import Resumed, RunFolder
from seq2seq.subwords import SampledPairs
from seq2seq.textio import display_name, read_lines
from seq2seq.tokenizer import TokenizerCache, Tokenizers, train_tokenizers

UNSEEN_SHOWN = 10  # the most frequent unseen characters listed, per side
# What a fine-tuned run may set otherwise than its model file: how the model is regularised, not its shape or vocabulary.
MAY_CHANGE_WHEN_FINE_TUNING = ("model.embedding_dropout", "model.layer_dropout", "model.output_dropout",
                               "tokenizer.sampling_alpha")

Unseen = list[tuple[str, int]]  # characters and how often they occur, most frequent first


@dataclass(frozen=True)
class Start:
    """A run ready for its first update."""

    resumed: Resumed | None      # last.pt's model and loop state, when the run continues
    tokenizers: Tokenizers
    model: TrainedModel          # on the world's device
    examples: Examples           # the training pairs kept
    stats: FilterStats           # what encoding kept and skipped
    train_lines: int
    valid_examples: Examples
    valid_stats: FilterStats
    valid_src: list[str]
    valid_tgt: list[str]
    unseen: tuple[Unseen, Unseen] | None  # validation characters absent from training (source, target), if asked
    sampled: SampledPairs | None  # the training pairs' text, cut anew each epoch (tokenizer.sampling_alpha)
    started_from: dict[str, Any] | None  # a fine-tuned run's model file: its path, step and selected validation score


def start_run(
    cfg: Config, folder: RunFolder | None, world: World, *, overwrite: bool = False, resume: bool = False,
    report: Report = lambda event: None, tokenizer_cache: TokenizerCache | None = None, create: bool = True,
    count_unseen: bool = False,
) -> Start:
    """Check, read, tokenize, encode and build, reporting `Preparing` stages; with `create`, rank 0 makes the
    folder (and writes config.toml) once everything has been read. With `count_unseen`, also list the
    validation characters that the training text lacks (a pass over the whole text: the dry run's report)."""
    data, language_model = cfg.data, cfg.model.language_model
    if language_model and (data.source or data.valid_source):
        raise ConfigError("a language model (model.language_model) reads no source: leave data.source and "
                          "data.valid_source unset")
    if not (data.target and data.valid_target and (language_model or (data.source and data.valid_source))):
        raise ConfigError("training needs data.source, data.target, data.valid_source and data.valid_target "
                          "(a language model: data.target and data.valid_target alone)")
    if "bf16" in (cfg.train.precision, cfg.search.precision):  # search's too, or validation would stop the run
        world.everywhere(devices.require_bf16_units, world.device)
    # Every rank checks the folder and reads the data, writing nothing; an error on any rank stops them all.
    resumed = world.everywhere(folder.check, cfg, overwrite=overwrite, resume=resume, world_size=world.size) if folder else None
    src_lines, tgt_lines, valid_src, valid_tgt = world.everywhere(_read, cfg)
    check_references(validation_metrics(cfg.train), [(display_name(data.valid_target), valid_tgt)])
    base = world.everywhere(_fine_tuned, cfg) if cfg.train.init_from and not resumed else None
    if create and folder:
        world.on_main(folder.create, cfg, overwrite=overwrite)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    if not (resumed or base):
        report(Preparing("tokenizer", len(tgt_lines)))
    try:
        tokenizers = (resumed.checkpoint.tokenizers if resumed else base.tokenizers if base
                      else world.on_main(train_tokenizers, src_lines, tgt_lines, cfg.tokenizer, tokenizer_cache))
    except DataError as error:  # the text itself: name the files it came from
        raise DataError(f"{' and '.join(filter(None, (data.source, data.target)))}: {error}") from None
    report(Preparing("encoding", len(tgt_lines)))
    kept: list[int] | None = [] if cfg.tokenizer.sampling_alpha else None
    examples, stats = encode_pairs(None if language_model else src_lines, tgt_lines, tokenizers, max_length=data.max_length,
                                   kept=kept)
    sampled = None if kept is None else SampledPairs(tokenizers, cfg.tokenizer, cfg.train.seed,
                                                     [src_lines[i] if src_lines else "" for i in kept],
                                                     [tgt_lines[i] for i in kept])
    unseen = (unseen_characters(src_lines, valid_src), unseen_characters(tgt_lines, valid_tgt)) if count_unseen else None
    train_lines = len(tgt_lines)
    del src_lines, tgt_lines  # never read again (sampling keeps the pairs it cuts); 1M pairs of text hold 0.3 GB
    if not examples:
        raise DataError(f"{data.source or data.target}: no usable training {'lines' if language_model else 'pairs'} "
                        f"({stats.empty} empty, {stats.too_long} too long)")
    valid_examples, valid_stats = encode_pairs(None if language_model else valid_src, valid_tgt, tokenizers, max_length=0)
    if resumed:
        model, started_from = resumed.checkpoint.model, resumed.checkpoint.info.get("started_from")
    elif base:
        model = checkpoint.model_class(cfg.model).from_state(cfg.model, tokenizers.src.vocab_size, tokenizers.tgt.vocab_size,
                                                             base.model.state_dict())
        started_from = _origin(cfg.train.init_from, base)
    else:
        model, started_from = checkpoint.build_model(cfg, tokenizers), None
    return Start(resumed, tokenizers, model.to(world.device), examples, stats, train_lines, valid_examples, valid_stats,
                 valid_src, valid_tgt, unseen, sampled, started_from)


def _fine_tuned(cfg: Config) -> checkpoint.Checkpoint:
    """The model file that train.init_from names, once the settings are found to keep its architecture and vocabulary."""
    path = cfg.train.init_from
    assert path is not None, "fine-tuning only"
    base = checkpoint.load(path)
    changed = changed_setting(base.config, cfg, fixed=lambda name: name.startswith(("model.", "tokenizer."))
                              and name not in MAY_CHANGE_WHEN_FINE_TUNING)
    if changed:
        name, before, now = changed
        raise ConfigError(f"{name} is {now!r} but {path} was trained with {before!r}: a fine-tuned model keeps its "
                          "architecture and vocabulary (only dropout, tokenizer.sampling_alpha and training settings may change)")
    return base


def _origin(path: str, base: checkpoint.Checkpoint) -> dict[str, Any]:
    """Where a fine-tuned run started, as its checkpoints record it: the file, its step and its selected validation score."""
    metric = base.config.train.select_metric
    return {"file": str(Path(path).resolve()), "step": base.step, "metric": metric, "score": base.info.get(f"valid_{metric}")}


def _read(cfg: Config) -> tuple[list[str], list[str], list[str], list[str]]:
    """The training and validation text, each source side beside its target. A language model's text has no
    source: its training source is no lines at all, its validation sources empty lines."""
    data = cfg.data
    if cfg.model.language_model:
        tgt_lines, valid_tgt = read_lines(data.target), read_lines(data.valid_target)
        if not tgt_lines:
            raise DataError(f"{data.target} is empty: no text to learn from")
        return [], tgt_lines, [""] * len(valid_tgt), valid_tgt
    src_lines, tgt_lines = read_parallel(data.source, data.target)
    valid_src, valid_tgt = read_parallel(data.valid_source, data.valid_target)
    return src_lines, tgt_lines, valid_src, valid_tgt


def unseen_characters(train_lines: Sequence[str], valid_lines: Sequence[str]) -> Unseen:
    """Characters of the validation lines that no training line holds, most frequent first: what will become <unk>."""
    seen = set("".join(train_lines))
    counts = Counter(char for char in "".join(valid_lines) if char not in seen and not char.isspace())
    return counts.most_common(UNSEEN_SHOWN)
