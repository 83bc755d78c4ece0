"""`seq2seq train`: resolve the settings (defaults < --config < flags), then hand over to the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.console import SPEAKS, help_epilog, say, say_error, user_errors

if TYPE_CHECKING:
    from seq2seq import Config, Finished, TokenizerCache, TrainingPreview

EPILOG = help_epilog("""\
\b
Examples:
  seq2seq train                                   # the embedded CMUdict letters->phonemes corpus
  seq2seq train --source train.de.gz --target train.en.gz \\
      --valid-source val.de.gz --valid-target val.en.gz --output runs/de-en --max-time 30
  seq2seq train --config data/recipes/multi30k.toml --source ... --output runs/de-en
  seq2seq train --config my.toml --set model.layer_dropout=0.2 --print-config
  seq2seq train --source train.de.gz ... --output runs/de-en --dry-run   # counts, coverage, time per epoch
  seq2seq train --init-from runs/de-en/best.pt --source new.de --target new.en \\
      --valid-source new-val.de --valid-target new-val.en --output runs/de-en-new --max-time 5   # fine-tune
  seq2seq train --target train.en --valid-target valid.en --output runs/lm   # no source: a language model
  seq2seq train --config my.toml --set train.accumulate=4 --set train.ema_decay=0.999 \\
      --set tokenizer.sampling_alpha=0.1 --output runs/big   # 4 batches an update; averaged weights; sampled pieces

Every setting lives in the config tree (see --print-config); flags and --set override the file.
The best checkpoint's path is printed on stdout when training ends.""")

Opt = typer.Option


def train(
    source: Annotated[str | None, Opt(help="Training source file (plain or .gz, one sentence a line).", rich_help_panel="Data")] = None,
    target: Annotated[str | None, Opt(help="Training target file, parallel to --source; alone (no --source), the text a language model learns.", rich_help_panel="Data")] = None,
    valid_source: Annotated[str | None, Opt(help="Validation source file.", rich_help_panel="Data")] = None,
    valid_target: Annotated[str | None, Opt(help="Validation target file (the reference of the validation scores).", rich_help_panel="Data")] = None,
    output: Annotated[Path | None, Opt("--output", "-o", help="Run folder for checkpoints, metrics and config.", rich_help_panel="Data")] = None,
    init_from: Annotated[str | None, Opt(metavar="MODEL", help="Fine-tune: start from this model file's weights and tokenizers (its model settings), with a new optimizer, schedule and step count.", rich_help_panel="Data")] = None,
    config_file: Annotated[Path | None, Opt("--config", "-c", help="Settings file (TOML, or YAML with PyYAML).", rich_help_panel="Settings")] = None,
    overrides: Annotated[list[str] | None, Opt("--set", metavar="SECTION.KEY=VALUE", help="Override any setting; repeatable.", rich_help_panel="Settings")] = None,
    vocab_size: Annotated[int | None, Opt(help="SentencePiece vocabulary size.", rich_help_panel="Tokenizer")] = None,
    tokenizer_type: Annotated[str | None, Opt(help="unigram, bpe, char or word.", rich_help_panel="Tokenizer")] = None,
    separate_vocab: Annotated[bool | None, Opt("--separate-vocab/--joint-vocab", help="One tokenizer per side, or one joint one.", show_default=False, rich_help_panel="Tokenizer")] = None,
    cache_dir: Annotated[Path | None, Opt(envvar="SEQ2SEQ_CACHE_DIR", help="Keeps trained tokenizers: a later run on the same lines and settings takes them from here.", show_default="$XDG_CACHE_HOME/seq2seq, or ~/.cache/seq2seq", rich_help_panel="Tokenizer")] = None,
    no_cache: Annotated[bool, Opt("--no-cache", help="Train the tokenizer even when the cache holds it, and keep nothing there.", rich_help_panel="Tokenizer")] = False,
    emb_dim: Annotated[int | None, Opt(help="Embedding size.", rich_help_panel="Model")] = None,
    hidden_dim: Annotated[int | None, Opt(help="Decoder LSTM size (the encoder's two directions share it).", rich_help_panel="Model")] = None,
    layers: Annotated[int | None, Opt(help="LSTM layers in encoder and decoder.", rich_help_panel="Model")] = None,
    max_length: Annotated[int | None, Opt(help="Skip training pairs with a side longer than this many pieces (0 = keep all).", rich_help_panel="Data")] = None,
    batch_tokens: Annotated[int | None, Opt(help="Token budget per batch (padded source + target).", rich_help_panel="Training")] = None,
    max_steps: Annotated[int | None, Opt(help="Stop after this many updates (0 = no limit).", rich_help_panel="Training")] = None,
    max_time: Annotated[float | None, Opt(help="Stop after this many minutes (0 = no limit).", rich_help_panel="Training")] = None,
    valid_every: Annotated[int | None, Opt(help="Validate every N updates.", rich_help_panel="Training")] = None,
    valid_beam: Annotated[int | None, Opt(help="Beam size of validation's translations: 1 = greedy (quickest), 5 = what translate searches. [default: 1]", show_default=False, rich_help_panel="Training")] = None,
    select_metric: Annotated[str | None, Opt(help="The validation score that picks best.pt: bleu, chrf, ter, wer, cer, exact or loss. [default: bleu]", show_default=False, rich_help_panel="Training")] = None,
    seed: Annotated[int | None, Opt(help="Random seed (weights, batch order, dropout).", rich_help_panel="Training")] = None,
    precision: Annotated[str | None, Opt(help="fp32, or bf16 (autocast; weights and updates stay fp32).", rich_help_panel="Training")] = None,
    device: Annotated[str | None, Opt(help="auto, cpu or cuda (auto: the GPU when CUDA is available).", rich_help_panel="Training")] = None,
    print_config: Annotated[bool, Opt("--print-config", help="Print the resolved settings as TOML and exit.")] = False,
    dry_run: Annotated[bool, Opt("--dry-run", help="Check the data, count what would be skipped, time a few updates; write nothing.")] = False,
    resume: Annotated[bool, Opt("--resume", help="Continue the run in --output from its last.pt, exactly where it stopped.")] = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace a run already in --output.")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="Print errors only.")] = False,
) -> None:
    """Train SentencePiece and an attention LSTM on parallel text (or a language model on text alone); keep best.pt and last.pt."""
    with user_errors():
        import seq2seq

        flags = {
            "data.source": source, "data.target": target,
            "data.valid_source": valid_source, "data.valid_target": valid_target, "data.max_length": max_length,
            "tokenizer.vocab_size": vocab_size, "tokenizer.model_type": tokenizer_type,
            "tokenizer.joint": None if separate_vocab is None else not separate_vocab,
            "model.emb_dim": emb_dim, "model.hidden_dim": hidden_dim, "model.layers": layers,
            "train.batch_tokens": batch_tokens, "train.max_steps": max_steps, "train.max_time": max_time,
            "train.valid_every": valid_every, "train.valid_beam": valid_beam, "train.select_metric": select_metric, "train.seed": seed, "train.precision": precision,
            "train.device": device, "train.init_from": init_from,
        }
        chosen: dict[str, Any] = dict(seq2seq.parse_override(text) for text in overrides or [])
        chosen.update({key: value for key, value in flags.items() if value is not None})
        cfg, folder = seq2seq.settings_for_run(config_file, chosen, output=output, resume=resume)
        if print_config:
            sys.stdout.write(seq2seq.config_toml(cfg))
            return
        if folder is None:
            raise seq2seq.ConfigError("--output is required when training on your own data")
        warn = (lambda message: None) if quiet else say
        cache = None if no_cache or resume else seq2seq.tokenizer_cache(cache_dir, writable=not dry_run, warn=warn)
        if dry_run:
            _dry_run(cfg, folder, cache, resume=resume, overwrite=overwrite, quiet=quiet)
            return
        finished = _run(cfg, folder, cache, resume=resume, overwrite=overwrite, quiet=quiet)
        if SPEAKS:
            sys.stdout.write(f"{finished.best_path}\n")


def _run(cfg: Config, output: Path, cache: TokenizerCache | None, *, resume: bool, overwrite: bool, quiet: bool) -> Finished:
    """Train with progress on stderr and Ctrl-C/SIGTERM handled; exits unless the run reached its limit."""
    import seq2seq

    from cli.signals import EXIT_CODES, StopNow, stop_requests
    from cli.training_progress import TrainingReporter

    seq2seq.reuse_freed_memory()
    seq2seq.small_kernel_cache()
    try:
        with TrainingReporter(cfg.train, quiet=quiet) as reporter, stop_requests() as stop_request:
            finished = seq2seq.train(cfg, output, report=reporter, overwrite=overwrite, resume=resume,
                                     should_stop=stop_request, tokenizer_cache=cache)
    except StopNow as stop:
        say(f"{stop.reason} again: stopped at once; the checkpoints in {output} are those saved before")
        raise typer.Exit(EXIT_CODES[stop.reason]) from None
    if finished.reason in EXIT_CODES:
        say(f"{finished.reason} at step {finished.step:,}: saved {finished.last_path}; "
            "continue with the same command plus --resume")
        raise typer.Exit(EXIT_CODES[finished.reason])
    if finished.reason == "non_finite":
        kept = f"{finished.last_path} holds the last finite weights" if finished.last_path.exists() else "no checkpoint was saved"
        say_error(f"training stopped at step {finished.step:,}: the loss, gradients or weights went NaN or infinite "
                  f"(try a lower --set train.lr=...); {kept}")
        raise typer.Exit(1)
    return finished


def _dry_run(cfg: Config, output: Path, cache: TokenizerCache | None, *, resume: bool, overwrite: bool, quiet: bool) -> None:
    """What training would do, as "label  value" lines on stdout (the command's answer, so -q keeps it)."""
    from rich.console import Console
    from rich.text import Text

    from seq2seq import preview_training

    if not quiet:
        say("dry run: reading the data, preparing the tokenizer and timing a few updates; nothing is written")
    preview = preview_training(cfg, output, overwrite=overwrite, resume=resume, tokenizer_cache=cache)
    rows = _preview_rows(preview, cfg, output, cached=bool(cache and cache.used))
    width = max(len(label) for label, _ in rows) + 2
    console = Console(highlight=False, soft_wrap=True)
    for label, value in rows:
        console.print(Text.assemble((label.ljust(width), "bold"), value))


def _preview_rows(preview: TrainingPreview, cfg: Config, output: Path, *, cached: bool) -> list[tuple[str, str]]:
    stats, limit, kinds = preview.train, cfg.data.max_length, cfg.tokenizer

    def unseen(chars: list[tuple[str, int]]) -> str:
        return ", ".join(f"{char!r} x{count:,}" for char, count in chars) or "none"

    run = (f"continues after step {preview.resumed_step:,}" if preview.resumed_step
           else f"a new run from {preview.started_from}'s weights" if preview.started_from else "a new run")
    vocabulary = (f"{preview.src_vocab:,} pieces, joint ({kinds.model_type})" if preview.joint
                  else f"{preview.src_vocab:,} source pieces ({kinds.model_type}), {preview.tgt_vocab:,} target pieces "
                       f"({kinds.target_model_type or kinds.model_type})")
    too_long = f"{stats.too_long:,} skipped as over {limit:,} pieces (data.max_length)" if limit else "no length limit"
    if cfg.model.language_model:  # target text alone: no pairs, no source side
        texts = ("training text", f"{preview.train_lines:,} lines: {stats.kept:,} kept, {stats.empty:,} empty skipped, {too_long}")
        valid = ("validation text", f"{preview.valid_lines:,} lines ({preview.valid_empty:,} empty), for a language model")
        unknown = ("validation <unk>", f"{preview.tgt_unknown:.2%} of pieces")
        characters = ("unseen characters", f"{unseen(preview.tgt_unseen)} (in validation, not in training)")
        vocabulary = f"{preview.tgt_vocab:,} pieces ({kinds.model_type})"
    else:
        texts = ("training pairs", f"{preview.train_lines:,} lines: {stats.kept:,} kept, {stats.empty:,} skipped with an empty side, {too_long}")
        valid = ("validation pairs", f"{preview.valid_lines:,} lines ({preview.valid_empty:,} with an empty side)")
        unknown = ("validation <unk>", f"source {preview.src_unknown:.2%}, target {preview.tgt_unknown:.2%} of pieces")
        characters = ("unseen characters", f"source {unseen(preview.src_unseen)}; target {unseen(preview.tgt_unseen)} "
                                           "(in validation, not in training)")
    return [
        texts,
        valid,
        ("vocabulary", vocabulary + ("; from the tokenizer cache" if cached else "")),
        unknown,
        characters,
        ("parameters", f"{preview.parameters:,}"),
        ("batches", f"{preview.batches_per_epoch:,} an epoch (train.batch_tokens = {cfg.train.batch_tokens:,})"
         if cfg.train.accumulate == 1 else f"{preview.batches_per_epoch:,} updates an epoch, each of {cfg.train.accumulate} "
                                           f"(train.accumulate) of train.batch_tokens = {cfg.train.batch_tokens:,}"),
        ("time", f"{preview.seconds_per_update:.3f} s an update (mean of {preview.timed_updates} timed here): about "
                 f"{_duration(preview.seconds_per_epoch)} an epoch, validation not included"),
        ("run folder", f"{output}: {run}; nothing was written"),
    ]


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def register(app: typer.Typer) -> None:
    app.command(epilog=EPILOG, no_args_is_help=False)(train)
