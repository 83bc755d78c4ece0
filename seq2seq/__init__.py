"""seq2seq: attention LSTM translation models, trained, run and scored from the terminal or from Python.

    import seq2seq

    translator = seq2seq.load("runs/de-en/best.pt", beam_size=5)
    for best, *others in translator.translate(["Ein Hund rennt.", "Zwei Katzen."], nbest=3, attention=True):
        print(best.text, best.score, best.alignment)

    cfg, folder = seq2seq.settings_for_run("data/recipes/multi30k.toml", {"train.max_steps": 1000, ...},
                                           output="runs/de-en")
    finished = seq2seq.train(cfg, folder)
    print(seq2seq.corpus_scores(hypotheses, [references], ["bleu", "chrf"]))

The names below are the library's public API, the one the `seq2seq` command uses. They are imported
on first use, so that `import seq2seq` (and `seq2seq --help`) stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from seq2seq.errors import CheckpointError, ConfigError, DataError, OutOfMemory, Seq2SeqError, WorkerDied

__version__ = "0.1.0"

# public name -> (module, name there)
_LAZY = {
    # translating
    "load": ("seq2seq.translator", "load"),
    "Translator": ("seq2seq.translator", "Translator"),
    "Translation": ("seq2seq.translation", "Translation"),
    "SourceAttention": ("seq2seq.translation", "SourceAttention"),
    "TargetScore": ("seq2seq.scoring", "TargetScore"),
    "Perplexity": ("seq2seq.scoring", "Perplexity"),
    "Ensemble": ("seq2seq.ensemble", "Ensemble"),
    "LanguageModel": ("seq2seq.language_model", "LanguageModel"),
    "Batcher": ("seq2seq.batching", "Batcher"),
    "QueueFull": ("seq2seq.batching", "QueueFull"),
    "OverLimit": ("seq2seq.batching", "OverLimit"),
    "Shard": ("seq2seq.sharding", "Shard"),
    "translation_shard": ("seq2seq.sharding", "joined"),
    # settings
    "Config": ("seq2seq.config", "Config"),
    "DataConfig": ("seq2seq.config", "DataConfig"),
    "TokenizerConfig": ("seq2seq.config", "TokenizerConfig"),
    "ModelConfig": ("seq2seq.config", "ModelConfig"),
    "TrainConfig": ("seq2seq.config", "TrainConfig"),
    "SearchConfig": ("seq2seq.config", "SearchConfig"),
    "resolve_config": ("seq2seq.config", "resolve"),
    "parse_override": ("seq2seq.config", "parse_override"),
    "config_dict": ("seq2seq.config", "to_dict"),
    "config_toml": ("seq2seq.config", "to_toml"),
    "settings_for_run": ("seq2seq.defaults", "settings_for_run"),
    "tokenizer_cache": ("seq2seq.defaults", "tokenizer_cache"),
    "TokenizerCache": ("seq2seq.tokenizer", "TokenizerCache"),
    # training
    "train": ("seq2seq.training", "train"),
    "preview_training": ("seq2seq.inspection", "preview_training"),
    "TrainingPreview": ("seq2seq.inspection", "TrainingPreview"),
    "Event": ("seq2seq.events", "Event"),
    "Preparing": ("seq2seq.events", "Preparing"),
    "DataReady": ("seq2seq.events", "DataReady"),
    "StepsDone": ("seq2seq.events", "StepsDone"),
    "NonFinite": ("seq2seq.events", "NonFinite"),
    "ThreadsChanged": ("seq2seq.cores", "ThreadsChanged"),
    "Validated": ("seq2seq.events", "Validated"),
    "Finished": ("seq2seq.events", "Finished"),
    "COMPLETE": ("seq2seq.events", "COMPLETE"),
    # model files
    "Checkpoint": ("seq2seq.checkpoint", "Checkpoint"),
    "load_checkpoint": ("seq2seq.checkpoint", "load"),
    "save_checkpoint": ("seq2seq.checkpoint", "save"),
    "describe_checkpoint": ("seq2seq.checkpoint", "describe"),
    "average_checkpoints": ("seq2seq.averaging", "average"),
    # scoring
    "METRICS": ("seq2seq.metrics", "METRICS"),
    "corpus_scores": ("seq2seq.metrics", "corpus_scores"),
    "sentence_scores": ("seq2seq.metrics", "sentence_scores"),
    "compare_systems": ("seq2seq.metrics", "compare_systems"),
    "check_parallel": ("seq2seq.metrics", "check_parallel"),
    "check_references": ("seq2seq.metrics", "check_references"),
    "higher_is_better": ("seq2seq.metrics", "higher_is_better"),
    "edit_distance": ("seq2seq.errorrates", "edit_distance"),
    "Cell": ("seq2seq.metrics", "Cell"),
    "Comparison": ("seq2seq.metrics", "Comparison"),
    # text files
    "read_lines": ("seq2seq.textio", "read_lines"),
    "iter_lines": ("seq2seq.textio", "iter_lines"),
    "source_lines": ("seq2seq.textio", "source_lines"),
    "atomic_write": ("seq2seq.textio", "atomic_write"),
    "display_name": ("seq2seq.textio", "display_name"),
    # pictures (matplotlib, the `plot` extra)
    "read_metrics": ("seq2seq.plotting", "read_metrics"),
    "plot_curves": ("seq2seq.plotting", "plot_curves"),
    "plot_attention": ("seq2seq.plotting", "plot_attention"),
    "prepare_picture_folder": ("seq2seq.plotting", "prepare_picture_folder"),
    # the process
    "reuse_freed_memory": ("seq2seq.allocator", "reuse_freed_memory"),
    "small_kernel_cache": ("seq2seq.allocator", "small_kernel_cache"),
}

__all__ = ["__version__", "CheckpointError", "ConfigError", "DataError", "OutOfMemory", "Seq2SeqError", "WorkerDied",
           *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'seq2seq' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # found once; later uses do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from seq2seq.allocator import reuse_freed_memory, small_kernel_cache
    from seq2seq.averaging import average as average_checkpoints
    from seq2seq.batching import Batcher, OverLimit, QueueFull
    from seq2seq.checkpoint import Checkpoint
    from seq2seq.checkpoint import describe as describe_checkpoint
    from seq2seq.checkpoint import load as load_checkpoint
    from seq2seq.checkpoint import save as save_checkpoint
    from seq2seq.config import Config, DataConfig, ModelConfig, SearchConfig, TokenizerConfig, TrainConfig, parse_override
    from seq2seq.config import resolve as resolve_config
    from seq2seq.config import to_dict as config_dict
    from seq2seq.config import to_toml as config_toml
    from seq2seq.defaults import settings_for_run, tokenizer_cache
    from seq2seq.cores import ThreadsChanged
    from seq2seq.events import COMPLETE, DataReady, Event, Finished, NonFinite, Preparing, StepsDone, Validated
    from seq2seq.ensemble import Ensemble
    from seq2seq.language_model import LanguageModel
    from seq2seq.inspection import TrainingPreview, preview_training
    from seq2seq.errorrates import edit_distance
    from seq2seq.metrics import (METRICS, Cell, Comparison, check_parallel, check_references, compare_systems,
                                 corpus_scores, higher_is_better, sentence_scores)
    from seq2seq.plotting import plot_attention, plot_curves, prepare_picture_folder, read_metrics
    from seq2seq.scoring import Perplexity, TargetScore
    from seq2seq.sharding import Shard
    from seq2seq.sharding import joined as translation_shard
    from seq2seq.textio import atomic_write, display_name, iter_lines, read_lines, source_lines
    from seq2seq.tokenizer import TokenizerCache
    from seq2seq.training import train
    from seq2seq.translation import SourceAttention, Translation
    from seq2seq.translator import Translator, load
