"""What a run uses when it is not told: the embedded default task, the resumed run's settings, the tokenizer cache.

The command line and Python callers share these rules, so `seq2seq train` with no arguments and
`settings_for_run()` with none train the same model in the same place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from seq2seq import config as configuration
from seq2seq.config import Config
from seq2seq.errors import ConfigError
from seq2seq.tokenizer import TokenizerCache

# The embedded default: CMUdict grapheme-to-phoneme, shipped in the checkout's data/ folder.
PROJECT_DATA = Path(__file__).resolve().parents[1] / "data"
DEFAULT_RECIPE = PROJECT_DATA / "recipes" / "cmudict.toml"
DEFAULT_CORPUS = {
    "data.source": "cmudict/train.letters.gz",
    "data.target": "cmudict/train.phones.gz",
    "data.valid_source": "cmudict/valid.letters.gz",
    "data.valid_target": "cmudict/valid.phones.gz",
}
DEFAULT_OUTPUT = Path("runs/cmudict")


def settings_for_run(
    config_file: str | Path | None = None, overrides: dict[str, Any] | None = None, *, output: str | Path | None = None,
    resume: bool = False,
) -> tuple[Config, Path | None]:
    """The settings a run trains with, and its folder (None: the caller's own data and no folder named).

    Layers, later ones winning: the defaults; a resumed run's own config.toml (so that a resume alone
    repeats them) or, for a new run fine-tuning a model file (train.init_from), that file's model and
    tokenizer settings; `config_file`; `overrides` (dotted keys, e.g. {"train.max_steps": 100}). Given no data
    and no config file, the run trains on the embedded CMUdict corpus into runs/cmudict.
    """
    chosen = dict(overrides or {})
    saved = Path(output or DEFAULT_OUTPUT) / "config.toml"
    base = configuration.resolve(saved) if resume and saved.is_file() else None
    use_default = base is None and config_file is None and not any(key.startswith("data.") for key in chosen)
    if use_default:
        if not DEFAULT_RECIPE.is_file():
            raise ConfigError(f"the embedded default corpus lives in the source checkout ({PROJECT_DATA}); "
                              "run from a checkout or give --source/--target/--valid-source/--valid-target")
        config_file = DEFAULT_RECIPE
        chosen = {key: str(PROJECT_DATA / path) for key, path in DEFAULT_CORPUS.items()} | chosen
    cfg = configuration.resolve(config_file, chosen, base=base)
    if cfg.train.init_from and base is None:
        base = _model_settings(cfg.train.init_from)
        cfg = configuration.resolve(config_file, chosen, base=base)
    if _language_model(cfg) and not resume:
        cfg = configuration.resolve(config_file, chosen, base=_as_language_model(base or Config()))
    if output is None and (use_default or base):
        output = DEFAULT_OUTPUT
    return cfg, Path(output) if output is not None else None


# What a language model changes in the defaults: no encoder to attend to, and judged by its perplexity; its
# outputs (samples) end by a fixed length, since it has no source to measure them against.
LANGUAGE_MODEL = {
    "model": {"language_model": True, "attention": "none", "input_feeding": False, "bidirectional": False},
    "tokenizer": {"joint": True},
    "train": {"select_metric": "loss", "valid_metrics": ""},
    "search": {"max_length_ratio": 0.0, "max_length_constant": 100},
}


def _language_model(cfg: Config) -> bool:
    """Whether a run trains a language model: it says so, or it has target text and no source."""
    data = cfg.data
    return cfg.model.language_model or bool(data.target and not data.source and not data.valid_source)


def _as_language_model(layer: Config) -> Config:
    """`layer` with LANGUAGE_MODEL's settings: a layer under the config file and the flags, which may still say otherwise."""
    return replace(layer, **{section: replace(getattr(layer, section), **values) for section, values in LANGUAGE_MODEL.items()})


def _model_settings(path: str) -> Config:
    """The defaults, with a model file's model and tokenizer settings: the first layer of a run fine-tuning it."""
    from seq2seq import checkpoint  # torch, only for fine-tuning

    saved = checkpoint.load(path).config
    return Config(tokenizer=saved.tokenizer, model=saved.model)


def tokenizer_cache(
    folder: str | Path | None = None, *, writable: bool = True, warn: Callable[[str], None] = lambda message: None,
) -> TokenizerCache | None:
    """The tokenizer cache in `folder` (default: $XDG_CACHE_HOME/seq2seq, or ~/.cache/seq2seq), or None, said
    through `warn` in one line, when it cannot be written: a cache never stops a run."""
    try:
        base = Path(folder) if folder is not None else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seq2seq"
    except RuntimeError:  # no home folder to be found: nowhere to keep them by default
        warn("no home folder and no --cache-dir: tokenizers are trained and not kept")
        return None
    entries = base / "tokenizers"
    if writable:
        try:
            entries.mkdir(parents=True, exist_ok=True)
            if not os.access(entries, os.W_OK):
                raise PermissionError(13, "permission denied")
        except OSError as error:
            warn(f"{entries}: cannot keep tokenizers there ({error.strerror}); they are trained and not kept")
            return None
    return TokenizerCache(entries, writable=writable)
