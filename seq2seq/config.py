"""One typed configuration tree, saved whole in every checkpoint and in every run folder.

Settings come from three layers, later ones winning: the defaults below, a config file
(TOML, or YAML when PyYAML is installed) and dotted overrides such as `model.hidden_dim=256`
(which is what the CLI's flags turn into). Loading is strict: an unknown key or a value of
the wrong type is a ConfigError naming the dotted path, never a silent default.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from seq2seq.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    source: str | None = None          # training source file (plain or .gz, one sentence a line)
    target: str | None = None          # training target file, parallel to `source`
    valid_source: str | None = None    # validation source file
    valid_target: str | None = None    # validation target file (the reference of the validation scores)
    max_length: int = 100              # training pairs with a side longer than this (in pieces) are skipped


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 8000             # pieces per SentencePiece model (a soft limit for char/word)
    model_type: str = "unigram"        # unigram | bpe | char | word
    target_model_type: str | None = None  # the target side's type when not joint (unset = model_type)
    joint: bool = True                 # one model for both sides; false: one per side
    character_coverage: float = 1.0    # share of characters the model must cover
    byte_fallback: bool = True         # unseen characters become UTF-8 byte pieces, not <unk>: unigram and bpe
                                       # from vocab_size 1024 on (256 of its pieces), never char or word
    sampling_alpha: float = 0.0        # subword regularisation while training (unigram, bpe): a new segmentation of each
                                       # pair every epoch, drawn at random (seq2seq.subwords); 0 = off; never at validation


@dataclass(frozen=True)
class ModelConfig:
    language_model: bool = False       # a decoder alone, trained on target text with no source (`seq2seq train` without
                                       # --source sets it); no encoder, so no attention or input feeding
    cell: str = "lstm"                 # lstm | gru | rnn (the plain tanh RNN), in encoder and decoder
    emb_dim: int = 256                 # token embedding size (source and target)
    hidden_dim: int = 512              # decoder state size; a bidirectional encoder's two directions share it
    layers: int = 1                    # stacked recurrent layers in encoder and decoder
    bidirectional: bool = True         # read the source both ways
    attention: str = "bahdanau"        # bahdanau (MLP) | luong-dot | luong-general | none
    input_feeding: bool = True         # feed the previous attentional vector into the next step
    decoder_init: str = "bridge"       # bridge: tanh(W [final states]) | last: the final states as they are | zeros
    tie_output: bool = False           # the output layer reuses the target embeddings (projected when sizes differ)
    embedding_dropout: float = 0.3     # on source and target embeddings
    layer_dropout: float = 0.3         # between stacked layers
    output_dropout: float = 0.3        # on the attentional vector, before the output layer


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1                      # seeds weights, batch order and dropout
    init_from: str | None = None       # fine-tune: start from this model file's weights and tokenizers (its model
                                       # and tokenizer settings), with a new optimizer, schedule and step count
    optimizer: str = "adam"            # adam | adamw
    lr: float = 0.001                  # peak learning rate
    weight_decay: float = 0.0          # decoupled weight decay (adamw only)
    warmup_steps: int = 0              # linear warm-up from 0 to lr over this many updates
    schedule: str = "constant"         # constant | inverse-sqrt (after warm-up) | plateau (on the selected validation score)
    plateau_factor: float = 0.5        # plateau: multiply the learning rate by this ...
    plateau_patience: int = 2          # ... after this many validations without a new best score
    min_lr: float = 0.0                # the learning rate never decays below this
    clip_norm: float = 1.0             # gradients are rescaled to this global L2 norm when above it (0 = off)
    patience: int = 0                  # stop after this many validations without a new best score (0 = never)
    keep_best: int = 1                 # also keep the N best checkpoints as step-N.pt (best.pt is always kept)
    select_metric: str = "bleu"        # bleu | chrf | ter | wer | cer | exact | loss: the validation score that picks
                                       # best.pt and keep_best and drives patience and plateau (ter, wer, cer, loss: lower is better)
    valid_metrics: str = "bleu"        # also computed at each validation, comma-separated (the selected one always is)
    label_smoothing: float = 0.1       # mass spread over the vocabulary in the training loss
    batch_tokens: int = 4000           # token budget per batch (padded source + target positions)
    accumulate: int = 1                # batches of batch_tokens whose gradients add up to one update (a step)
    ema_decay: float = 0.0             # validate and save a moving average of the weights, updated with this decay
                                       # after every update (0 = off; e.g. 0.999)
    max_steps: int = 20000             # stop after this many updates (0 = no limit)
    max_time: float = 0.0              # stop after this many minutes of wall clock (0 = no limit)
    valid_every: int = 500             # validate (loss, perplexity, the translations' scores) every N updates
    valid_beam: int = 1                # beam size of validation's translations: 1 = greedy (quickest); wider picks best.pt
                                       # by the search translate will run (beam 5: 2.6-2.7x greedy's translating time)
    log_every: int = 50                # report loss, gradient norm and speed every N updates
    max_nonfinite: int = 5             # stop after this many updates in a row skipped for a NaN/inf loss or gradient
    threads: int = 0                   # torch intra-op threads; 0 = torch's choice on an idle machine, fewer while
                                       # other programs take cores (seq2seq.cores); N pins N, whatever else runs
    precision: str = "fp32"            # fp32 | bf16 (autocast for the forward pass; weights and updates stay fp32)
    backend: str = "auto"              # auto | gloo | nccl: how torchrun's processes talk (auto: nccl with CUDA, else gloo)
    device: str = "auto"               # auto | cpu | cuda: where one process trains (auto: the GPU when CUDA is available)


@dataclass(frozen=True)
class SearchConfig:
    beam_size: int = 5                 # hypotheses kept per sentence; 1 = greedy
    batch_size: int = 64               # sentences translated together
    length_penalty: float = 1.0        # GNMT alpha: score / ((5 + len) / 6) ** alpha; 0 = off
    length_norm: bool = False          # rank by score / length instead (overrides length_penalty)
    max_length_ratio: float = 2.0      # a hypothesis ends by ratio * source length + constant
    max_length_constant: int = 10      # (a language model: ratio 0, so this alone, 100 unless set: a sample's most pieces)
    min_length: int = 0                # no EOS before this many target pieces
    precision: str = "fp32"            # fp32 | bf16 (autocast: faster on CPUs with bf16 units)
    quantize: str = "none"             # none | int8 (int8 weights for the decoder's linear layers; fp32 between products)
    no_repeat_ngram: int = 0           # no n-gram of this many pieces twice in an output; 0 = off
    coverage_penalty: float = 0.0      # GNMT beta: the beam re-ranked by how fully each output attended to the source
    sample: bool = False               # draw outputs from the model's distribution instead of searching for the best
    temperature: float = 1.0           # sampling: divides the log-probabilities (below 1: closer to greedy)
    top_k: int = 0                     # sampling: only from the k most probable pieces; 0 = all
    top_p: float = 1.0                 # sampling: only from the most probable pieces that together hold p (nucleus)
    seed: int = 0                      # sampling: the same seed gives the same samples, whatever the batch


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def validate(self) -> Config:
        """Refuse settings no run could use, before any work starts: every number against its range
        (`RANGES`), then the choices and the combinations."""
        values = to_dict(self)
        for name, allowed in RANGES.items():
            section, key = name.split(".")
            if values[section][key] not in allowed:
                raise ConfigError(f"{name} must be {allowed.text()}, got {values[section][key]!r}")
        checks = [
            (self.tokenizer.model_type in TOKENIZER_TYPES and self.tokenizer.target_model_type in (None, *TOKENIZER_TYPES),
             "tokenizer.model_type and tokenizer.target_model_type must be unigram, bpe, char or word"),
            (self.tokenizer.target_model_type is None or not self.tokenizer.joint,
             "tokenizer.target_model_type needs separate tokenizers (tokenizer.joint = false)"),
            (self.model.cell in ("lstm", "gru", "rnn"), "model.cell must be lstm, gru or rnn"),
            (self.model.attention in ("bahdanau", "luong-dot", "luong-general", "none"),
             "model.attention must be bahdanau, luong-dot, luong-general or none"),
            (self.model.decoder_init in ("bridge", "last", "zeros"), "model.decoder_init must be bridge, last or zeros"),
            (not self.model.language_model or (self.model.attention == "none" and not self.model.input_feeding),
             "a language model (model.language_model) has no source to attend to: model.attention must be none "
             "and model.input_feeding false"),
            (not self.model.language_model or self.tokenizer.joint,
             "a language model reads one side: tokenizer.joint must be true"),
            (not self.model.language_model or (self.train.select_metric == "loss" and not validation_metrics(self.train)),
             "a language model is judged by its validation perplexity: train.select_metric must be loss "
             "and train.valid_metrics empty"),
            (self.model.hidden_dim % 2 == 0 or not self.model.bidirectional or self.model.language_model,
             "model.hidden_dim must be even with a bidirectional encoder (its two directions share it)"),
            (self.train.optimizer in ("adam", "adamw"), "train.optimizer must be adam or adamw"),
            (self.train.schedule in ("constant", "inverse-sqrt", "plateau"),
             "train.schedule must be constant, inverse-sqrt or plateau"),
            (self.train.select_metric in SELECT_METRICS,
             f"train.select_metric must be one of {', '.join(SELECT_METRICS)}"),
            (set(validation_metrics(self.train)) <= set(SELECT_METRICS),
             f"train.valid_metrics must list metrics from {', '.join(SELECT_METRICS[:-1])}, separated by commas"),
            (self.train.precision in PRECISIONS and self.search.precision in PRECISIONS,
             "train.precision and search.precision must be fp32 or bf16"),
            (self.search.quantize in ("none", "int8"), "search.quantize must be none or int8"),
            (self.search.quantize == "none" or self.search.precision == "fp32",
             "search.quantize = int8 computes in fp32 between its int8 products: leave search.precision at fp32"),
            (self.train.backend in ("auto", "gloo", "nccl"), "train.backend must be auto, gloo or nccl"),
            (self.train.device in DEVICES, "train.device must be auto, cpu or cuda"),
            (not self.tokenizer.sampling_alpha or {self.tokenizer.model_type, self.tokenizer.target_model_type or
                                                   self.tokenizer.model_type} <= set(SAMPLED_TOKENIZER_TYPES),
             "tokenizer.sampling_alpha needs unigram or bpe tokenizers: char and word ones cut a text one way only"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


class Range(NamedTuple):
    """Where a numeric setting may lie: from `low` (itself too unless `above`) to `high` (itself too)."""

    low: float
    high: float = float("inf")
    above: bool = False     # `low` itself is out
    below: bool = False     # `high` itself is out

    def __contains__(self, value: object) -> bool:
        assert isinstance(value, (int, float))
        return (self.low < value or (value == self.low and not self.above)) and \
            (value < self.high or (value == self.high and not self.below))

    def text(self) -> str:
        """"at least 1", "above 0.0 and at most 1.0", ... as a user reads a range."""
        lowest = f"above {self.low}" if self.above else f"at least {self.low}"
        if self.high == float("inf"):
            return lowest
        return f"{lowest} and {'below' if self.below else 'at most'} {self.high}"


AT_LEAST_0, AT_LEAST_1, ABOVE_0 = Range(0), Range(1), Range(0.0, above=True)
BELOW_1, UP_TO_1 = Range(0.0, 1.0, below=True), Range(0.0, 1.0, above=True)  # [0, 1) and (0, 1]
RANGES: dict[str, Range] = {  # every numeric setting's range
    "data.max_length": AT_LEAST_0,
    "tokenizer.vocab_size": Range(8),
    "tokenizer.character_coverage": UP_TO_1,
    "tokenizer.sampling_alpha": Range(0.0, 1.0),
    "model.emb_dim": AT_LEAST_1,
    "model.hidden_dim": AT_LEAST_1,
    "model.layers": AT_LEAST_1,
    "model.embedding_dropout": BELOW_1,
    "model.layer_dropout": BELOW_1,
    "model.output_dropout": BELOW_1,
    "train.seed": Range(0, 2**63 - 1),
    "train.lr": ABOVE_0,
    "train.weight_decay": AT_LEAST_0,
    "train.warmup_steps": AT_LEAST_0,
    "train.plateau_factor": UP_TO_1,
    "train.plateau_patience": AT_LEAST_1,
    "train.min_lr": AT_LEAST_0,
    "train.clip_norm": AT_LEAST_0,
    "train.patience": AT_LEAST_0,
    "train.keep_best": AT_LEAST_1,
    "train.label_smoothing": BELOW_1,
    "train.batch_tokens": AT_LEAST_1,
    "train.accumulate": AT_LEAST_1,
    "train.ema_decay": BELOW_1,
    "train.max_steps": AT_LEAST_0,
    "train.max_time": AT_LEAST_0,
    "train.valid_every": AT_LEAST_1,
    "train.valid_beam": AT_LEAST_1,
    "train.log_every": AT_LEAST_1,
    "train.max_nonfinite": AT_LEAST_1,
    "train.threads": AT_LEAST_0,
    "search.beam_size": AT_LEAST_1,
    "search.batch_size": AT_LEAST_1,
    "search.length_penalty": AT_LEAST_0,
    "search.max_length_ratio": AT_LEAST_0,
    "search.max_length_constant": AT_LEAST_0,
    "search.min_length": AT_LEAST_0,
    "search.no_repeat_ngram": AT_LEAST_0,
    "search.coverage_penalty": AT_LEAST_0,
    "search.temperature": ABOVE_0,
    "search.top_k": AT_LEAST_0,
    "search.top_p": UP_TO_1,
    "search.seed": Range(0, 2**63 - 1),
}


TOKENIZER_TYPES = ("unigram", "bpe", "char", "word")
SAMPLED_TOKENIZER_TYPES = ("unigram", "bpe")  # those with more than one way to cut a text (tokenizer.sampling_alpha)
SELECT_METRICS = ("bleu", "chrf", "ter", "wer", "cer", "exact", "loss")  # the scores a run can select its best model by
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def validation_metrics(train: TrainConfig) -> list[str]:
    """The metrics each validation computes: train.valid_metrics and the selected one (the loss is always computed)."""
    named = [name.strip().lower() for name in train.valid_metrics.split(",") if name.strip()]
    return [name for name in dict.fromkeys([*named, train.select_metric]) if name != "loss"]


def changed_setting(before: Config, after: Config, *, fixed: Callable[[str], bool]) -> tuple[str, Any, Any] | None:
    """The first setting named `section.key` for which `fixed(name)` holds that differs between the two configs, as
    (name, value before, value after); None if there is none. What a resumed or fine-tuned run may not change."""
    now = to_dict(after)
    for section, values in to_dict(before).items():
        for key, value in values.items():
            name = f"{section}.{key}"
            if value != now[section][key] and fixed(name):
                return name, value, now[section][key]
    return None


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """Plain nested dict (str/int/float/bool/None only): safe for weights-only checkpoints."""
    return dataclasses.asdict(config)


def from_dict(values: dict[str, Any]) -> Config:
    """Build a Config from nested plain values, refusing unknown keys and wrong types."""
    unknown = set(values) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config section '{sorted(unknown)[0]}' (known: {', '.join(SECTIONS)})")
    sections = {}
    for name in SECTIONS:
        cls = type(getattr(Config(), name))
        given = values.get(name, {})
        if not isinstance(given, dict):
            raise ConfigError(f"config section '{name}' must be a table of settings")
        hints = typing.get_type_hints(cls)
        unknown_keys = [key for key in given if key not in hints]
        if unknown_keys:
            raise ConfigError(f"unknown setting '{name}.{unknown_keys[0]}' (known: {', '.join(hints)})")
        sections[name] = cls(**{key: coerce(value, hints[key], f"{name}.{key}") for key, value in given.items()})
    return Config(**sections).validate()


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a value against a field's type; ints are accepted where floats are expected."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is not float and isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
    names = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise ConfigError(f"setting '{where}' must be {names}, got {value!r}")


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (or, with PyYAML installed, YAML) config file into nested plain values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: YAML configs need PyYAML (pip install 'seq2seq[yaml]'), or use TOML") from None
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
    else:
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML ({error})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected sections of settings at the top level")
    return values


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` -> ("section.key", value), the value read as a TOML literal when it is one."""
    key, sep, raw = text.partition("=")
    if not sep or key.count(".") != 1:
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. model.hidden_dim=256")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string: model.attention=luong-dot
    return key.strip(), value


def resolve(file: str | Path | None = None, overrides: dict[str, Any] | None = None, base: Config | None = None) -> Config:
    """Defaults (or `base`) < config file < overrides, as one validated Config."""
    values = to_dict(base or Config())
    layers = [load_file(file)] if file else []
    layers.append(_nest(overrides or {}))
    for layer in layers:
        for section, settings in layer.items():
            if not isinstance(settings, dict):
                raise ConfigError(f"config section '{section}' must be a table of settings")
            values.setdefault(section, {}).update(settings)
    return from_dict(values)


def _nest(dotted: dict[str, Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for key, value in dotted.items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    return nested


def to_toml(config: Config) -> str:
    """The resolved config as TOML; unset (None) settings are written as comments."""
    lines = []
    for section, settings in to_dict(config).items():
        lines.append(f"[{section}]")
        for key, value in settings.items():
            if value is None:
                lines.append(f"# {key} = (unset)")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)
