"""A model made ready to translate: what `seq2seq translate`, training's validation and Python callers use.

Making a `Translator` is where the policy lives: the search settings are checked (as a config file's
are), the device is chosen (int8 weights run on the CPU), bf16 and int8 are checked against the
machine, and the CPU speed-ups (`seq2seq.speedups`, `seq2seq.int8`) are swapped in, so that the model
and the search underneath state their math alone. Translating then only runs the pipeline
(`seq2seq.translation`).

    translator = load("runs/de-en/best.pt", beam_size=5)
    for hypotheses in translator.translate(["Ein Hund rennt."], nbest=2, attention=True):
        best = hypotheses[0]
        print(best.text, best.score, best.alignment)
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from seq2seq import checkpoint, devices
from seq2seq.config import Config, SearchConfig, coerce
from seq2seq.cores import ThreadsChanged
from seq2seq.ensemble import Ensemble
from seq2seq.errors import ConfigError
from seq2seq.int8 import quantized_int8
from seq2seq.checkpoint import TrainedModel
from seq2seq.scoring import TargetScore, score
from seq2seq.speedups import swap_in_few_rows_products, top_k_for
from seq2seq.textio import zip_lines
from seq2seq.tokenizer import Tokenizers
from seq2seq.search import OnStep
from seq2seq.translation import LongLine, Model, Translation, is_language_model, translate
from seq2seq.unknowns import UnknownCopier
from seq2seq.workers import worker_count

SEARCH_SETTINGS = tuple(field.name for field in dataclasses.fields(SearchConfig))
SEARCH_TYPES = typing.get_type_hints(SearchConfig)


def load(path: str | Path | Sequence[str | Path], *, weights: Sequence[float] | None = None,
         device: str | torch.device = "auto", **search: Any) -> Translator:
    """A translator for the model file at `path`, with its saved search settings overridden by `search`
    (beam_size=..., quantize="int8", ...; None keeps the saved value).

    Several paths make an ensemble (`seq2seq.ensemble`), mixed by `weights` (equal by default): the
    models must share their tokenizers, and the first one's search settings are the defaults.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    loaded = [checkpoint.load(one) for one in paths]
    first = loaded[0]
    for other_path, other in zip(paths[1:], loaded[1:]):
        if other.config.model.language_model != first.config.model.language_model:
            raise ConfigError(f"{other_path} and {paths[0]}: one is a language model and the other a translation "
                              "model; an ensemble's models must be of one kind")
        if _vocabulary(other.tokenizers) != _vocabulary(first.tokenizers):
            raise ConfigError(f"{other_path}: its tokenizers differ from {paths[0]}'s; the models of an ensemble "
                              "must share them (train them on the same data and tokenizer settings)")
    model = first.model if len(loaded) == 1 and weights is None else Ensemble([one.model for one in loaded], weights)
    return Translator(model, first.tokenizers, with_overrides(first.config.search, search), device=device)


def _vocabulary(tokenizers: Tokenizers) -> tuple[bytes, bytes]:
    return tokenizers.src.model_proto, tokenizers.tgt.model_proto


def with_overrides(search: SearchConfig, overrides: dict[str, Any]) -> SearchConfig:
    """`search` with the settings in `overrides` that are not None, checked; a ConfigError names the bad one."""
    unknown = sorted(set(overrides) - set(SEARCH_SETTINGS))
    if unknown:
        raise ConfigError(f"unknown search setting {unknown[0]!r}; the settings are {', '.join(SEARCH_SETTINGS)}")
    search = replace(search, **{name: coerce(value, SEARCH_TYPES[name], f"search.{name}")
                                for name, value in overrides.items() if value is not None})
    Config(search=search).validate()
    return search


class Translator:
    """A model, its tokenizers and its search settings, made ready to translate on one device.

    On the CPU the model's wide layers become `FewRowsLinear` in place (the same parameters, so a model
    still training keeps training them); with quantize = int8, an int8 copy translates and the model
    itself is left as it is, so it must not change afterwards.
    """

    def __init__(self, model: Model, tokenizers: Tokenizers, search: SearchConfig | None = None, *,
                 device: str | torch.device = "auto") -> None:
        self.search = with_overrides(search or SearchConfig(), {})
        self.tokenizers = tokenizers
        self.device = _device(device, self.search.quantize)
        if self.search.precision == "bf16":
            devices.require_bf16_units(self.device)
        model.to(self.device)
        if self.search.quantize == "int8":
            devices.require_int8_units()
        if isinstance(model, Ensemble):
            model = Ensemble([self._sped_up(member) for member in model.members], model.weights)
        else:
            model = self._sped_up(model)
        self.model = model
        self._top_k = top_k_for(self.device)

    def _sped_up(self, model: TrainedModel) -> TrainedModel:
        """`model` with this translator's speed-ups: an int8 copy, or on the CPU, its wide layers' faster products."""
        if self.search.quantize == "int8":
            return quantized_int8(model)
        return swap_in_few_rows_products(model) if self.device.type == "cpu" else model

    def translate(self, lines: Sequence[str], *, nbest: int = 1, attention: bool = False, **options: Any) -> list[list[Translation]]:
        """The `nbest` best translations of every line, best first. `options` are `stream`'s (workers=...,
        replace_unk=True) and search settings for this call (beam_size=..., length_penalty=...). With `attention`,
        each translation carries its attention over the source and its `.alignment`."""
        options.setdefault("chunk_lines", max(len(lines), 1))  # the whole list sorted by length: the least padding
        return list(self.stream(lines, nbest=nbest, attention=attention, **options))

    def stream(
        self, lines: Iterable[str], *, nbest: int = 1, attention: bool = False, chunk_lines: int | None = None,
        max_source_pieces: int = 0, on_cut: Callable[[int, int], None] = lambda number, pieces: None,
        workers: int = 1, prefixes: Iterable[str] | None = None, replace_unk: bool = False,
        on_long_line: Callable[[LongLine], None] = lambda line: None, on_step: OnStep | None = None, threads: int = 0,
        on_threads: Callable[[ThreadsChanged], None] = lambda change: None, **search: Any,
    ) -> Iterator[list[Translation]]:
        """`translate` one chunk at a time, for input of any length: each line's translations, in input order,
        as soon as its chunk is done (see `seq2seq.translation.translate` for `chunk_lines`, `max_source_pieces`,
        `on_cut`, `prefixes`, `on_long_line`, `on_step`, `threads` and `on_threads`). `workers`: processes searching side by side on the CPU (0 = one per core, on
        Linux). With sample=True, `nbest` is the number of samples per line. With `replace_unk`, each <unk> of an
        output becomes the source text it attended to most (`seq2seq.unknowns`). Every option is checked here,
        before any line is read."""
        settings = self.call_settings(nbest, **search)
        if max_source_pieces < 0:
            raise ConfigError(f"max_source_pieces must be 0 (no limit) or more, got {max_source_pieces}")
        if threads < 0:
            raise ConfigError(f"threads must be 0 (follow the free cores) or more, got {threads}")
        copier = UnknownCopier(self.model, self.tokenizers) if replace_unk else None
        results = translate(self.model, self.tokenizers, copier.reading(lines) if copier else lines, settings, nbest=nbest,
                            chunk_lines=chunk_lines, attention=attention or replace_unk, max_source_pieces=max_source_pieces,
                            on_cut=on_cut, workers=worker_count(workers, self.device), top_k=self._top_k, prefixes=prefixes,
                            on_long_line=on_long_line, on_step=on_step, threads=threads, on_threads=on_threads)
        return copier.mended(results, keep_attention=attention) if copier else results

    @property
    def language_model(self) -> bool:
        """Whether the model reads no source: its inputs are prompts, and it scores targets alone."""
        return is_language_model(self.model)

    def score(self, sources: Sequence[str] | None, targets: Sequence[str]) -> list[TargetScore]:
        """The model's log-probability of each target given its source (`seq2seq.scoring`), in order; a language
        model's sources are None (`Perplexity` sums them up)."""
        return list(self.score_stream(sources, targets, chunk_lines=max(len(targets), 1)))

    def score_stream(self, sources: Iterable[str] | None, targets: Iterable[str], *, chunk_lines: int | None = None,
                     names: tuple[str, str] = ("the sources", "the targets")) -> Iterator[TargetScore]:
        """`score` one chunk at a time, for input of any length; `names` name the two inputs when their
        lengths differ (a DataError)."""
        if (sources is None) != self.language_model:
            raise ConfigError("a language model reads no source: score its targets alone" if self.language_model
                              else "a translation model scores each target given its source: give the sources too")
        pairs = zip_lines(sources, names[0], targets, names[1]) if sources is not None else (("", t) for t in targets)
        return score(self.model, self.tokenizers, pairs, batch_size=self.search.batch_size,
                     precision=self.search.precision, chunk_lines=chunk_lines)

    def call_settings(self, nbest: int = 1, **overrides: Any) -> SearchConfig:
        """`settings(**overrides)` for a call asking for `nbest` outputs a line, checked before any line is read."""
        settings = self.settings(**overrides)
        if nbest < 1 or (nbest > settings.beam_size and not settings.sample):
            raise ConfigError(f"nbest must be from 1 to the beam size: got nbest {nbest} with beam_size {settings.beam_size}")
        return settings

    def settings(self, **overrides: Any) -> SearchConfig:
        """This translator's search settings with `overrides`; quantize is fixed when the translator is made."""
        settings = with_overrides(self.search, overrides)
        if settings.quantize != self.search.quantize:
            raise ConfigError(f"quantize = {settings.quantize} changes the model: make a new translator "
                              f"(load(..., quantize={settings.quantize!r}))")
        if settings.precision == "bf16":
            devices.require_bf16_units(self.device)
        return settings


def _device(setting: str | torch.device, quantize: str) -> torch.device:
    """Where to translate (auto | cpu | cuda, or a device already chosen): int8 weights run on the CPU
    alone, so auto means the CPU for them."""
    asked = setting.type if isinstance(setting, torch.device) else setting
    if quantize == "int8" and asked == "cuda":
        raise ConfigError("quantize = int8 runs on the CPU: use device cpu or auto (--device)")
    if quantize == "int8":
        return torch.device("cpu")
    return setting if isinstance(setting, torch.device) else devices.resolve(setting)
