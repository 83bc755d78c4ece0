"""The training loop: one top-to-bottom read. It never prints; it reports typed events to a callback.

A run can stop at any step boundary and later continue exactly where it stopped (`resume`): last.pt
carries the whole training state (see `seq2seq.runfolder`). `should_stop` is asked after every update;
the CLI answers it from its Ctrl-C and SIGTERM handlers.

Started by torchrun, the same loop runs in every process (`seq2seq.distributed`): each rank trains on its
share of every batch and DDP averages the gradients; rank 0 alone validates, writes files and reports;
every decision (skip a non-finite update, a new best, stop) is taken once, the same on every rank.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from seq2seq import checkpoint, devices, distributed, metrics, runfolder
from seq2seq.config import Config, TrainConfig, to_toml
from seq2seq.data import Batch, Examples, FilterStats, collate, encode_pairs, plan_batches, read_parallel, share
from seq2seq.distributed import ALONE, World
from seq2seq.errors import ConfigError, DataError, OutOfMemory
from seq2seq.model import Seq2Seq
from seq2seq.optim import LearningRate, build_optimizer
from seq2seq.runfolder import LoopState
from seq2seq.textio import atomic_write
from seq2seq.tokenizer import PAD_ID, TokenizerCache, Tokenizers, train_tokenizers
from seq2seq.translation import translate_all

LIMITS = ("max_steps", "max_time")
COMPLETE = (*LIMITS, "patience")  # the run ended as its settings asked: validated and saved
# Why a step may end the run, least urgent first; ranks that disagree (their clocks, their signals) take the
# most urgent. A limit outranks a stop request, as in one process: the run then validates before it ends.
STOP_RANKING = ("", "interrupted", "terminated", "max_time", "max_steps")


@dataclass(frozen=True)
class Preparing:
    """A stage of the start, before the first update: on 1M pairs the start takes from 20 s to over a minute."""

    stage: str   # "tokenizer" (trained, or taken from the cache), "encoding" or "planning"
    pairs: int   # the training pairs it works on


@dataclass(frozen=True)
class DataReady:
    train: FilterStats
    valid_pairs: int
    src_vocab: int
    tgt_vocab: int
    parameters: int
    batches_per_epoch: int
    resumed_step: int    # the step a resumed run continues after; 0 for a new run
    cached_tokenizers: tuple[Path, ...] = ()  # tokenizer files taken from the cache instead of trained


@dataclass(frozen=True)
class StepsDone:
    step: int
    epoch: int
    loss: float          # training loss per target token over the last `log_every` steps
    grad_norm: float     # mean global gradient norm before clipping, over the same steps
    grad_norm_max: float
    clipped: int         # how many of those steps were rescaled to clip_norm
    skipped: int         # steps whose loss or gradient was not finite (no update made)
    tokens_per_s: float  # target tokens per second of wall clock (all ranks together), validation excluded
    elapsed: float       # seconds trained, all sessions of a resumed run together


@dataclass(frozen=True)
class NonFinite:
    step: int
    loss: float
    grad_norm: float
    in_a_row: int        # updates skipped in a row; training stops at train.max_nonfinite


@dataclass(frozen=True)
class Validated:
    step: int
    loss: float          # cross-entropy per target token (no label smoothing)
    perplexity: float
    bleu: float          # greedy, detokenized, sacreBLEU
    signature: str
    is_best: bool
    elapsed: float


@dataclass(frozen=True)
class Finished:
    """How a run ended. "max_steps", "max_time" and "patience" (train.patience validations without a new
    best BLEU): validated and saved. A reason `should_stop` gave
    ("interrupted", "terminated"): last.pt saved at that step, without validating. "non_finite":
    train.max_nonfinite updates in a row were skipped (or the weights went NaN); nothing was saved
    at the end, so best.pt and last.pt are the last ones with finite weights."""

    step: int
    reason: str
    best_path: Path
    last_path: Path
    best_bleu: float
    elapsed: float


Event = Preparing | DataReady | StepsDone | NonFinite | Validated | Finished
Report = Callable[[Event], None]
StopCheck = Callable[[], "str | None"]


@dataclass(frozen=True)
class _Run:
    """What the loop works with and never reassigns."""

    cfg: Config
    out_dir: Path
    world: World
    tokenizers: Tokenizers
    model: Seq2Seq        # what is validated and saved: never wrapped
    network: nn.Module    # what the training forward goes through: the model, or DDP around it
    optimizer: torch.optim.Optimizer
    rate: LearningRate
    examples: Examples
    valid_examples: Examples
    valid_src: list[str]
    valid_tgt: list[str]


def train(
    cfg: Config, out_dir: str | Path, *, report: Report = lambda event: None, overwrite: bool = False,
    resume: bool = False, should_stop: StopCheck = lambda: None, tokenizer_cache: TokenizerCache | None = None,
) -> Finished:
    """Train from cfg.data into `out_dir` (config.toml, metrics.jsonl, best.pt, last.pt).

    `resume` continues the run in `out_dir` from its last.pt with that run's tokenizers, exactly as if it
    had never stopped. A new run takes its tokenizers from `tokenizer_cache` when they were trained there on
    the same lines and settings. Nothing is written before the folder, the settings and the data have been checked.
    Under torchrun every process calls this alike (see `seq2seq.distributed`); only rank 0 writes and reports.
    """
    data = cfg.data
    if not (data.source and data.target and data.valid_source and data.valid_target):
        raise ConfigError("training needs data.source, data.target, data.valid_source and data.valid_target")
    with distributed.join(cfg.train.backend, cfg.train.device) as world:
        return _train(cfg, Path(out_dir), world, report if world.is_main else _silent, overwrite=overwrite,
                      resume=resume, should_stop=should_stop, tokenizer_cache=tokenizer_cache)


def _silent(event: Event) -> None:
    """Ranks other than 0 report nothing: one process speaks for the run."""


def _train(
    cfg: Config, out_dir: Path, world: World, report: Report, *, overwrite: bool, resume: bool, should_stop: StopCheck,
    tokenizer_cache: TokenizerCache | None,
) -> Finished:
    data = cfg.data
    if "bf16" in (cfg.train.precision, cfg.search.precision):  # search's too, or validation would stop the run
        world.everywhere(lambda: devices.require_bf16_units(world.device))
    # Every rank checks the folder and reads the data, writing nothing; an error on any rank stops them all.
    resumed, src_lines, tgt_lines, valid_src, valid_tgt = world.everywhere(
        lambda: _check_and_read(cfg, out_dir, world.size, overwrite=overwrite, resume=resume))
    world.on_main(lambda: _prepare(out_dir, cfg, overwrite=overwrite))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    if not resumed:
        report(Preparing("tokenizer", len(src_lines)))
    tokenizers = resumed.checkpoint.tokenizers if resumed else world.on_main(
        partial(train_tokenizers, src_lines, tgt_lines, cfg.tokenizer, tokenizer_cache))
    report(Preparing("encoding", len(src_lines)))
    examples, stats = encode_pairs(src_lines, tgt_lines, tokenizers, max_length=data.max_length)
    del src_lines, tgt_lines  # never read again; 1M pairs of text hold 0.3 GB
    if not examples:
        raise DataError(f"{data.source}: no usable training pairs ({stats.empty} empty, {stats.too_long} too long)")
    valid_examples, _ = encode_pairs(valid_src, valid_tgt, tokenizers, max_length=0)
    model = (resumed.checkpoint.model if resumed else checkpoint.build_model(cfg, tokenizers)).to(world.device)
    network = world.wrap(model)  # every rank starts from rank 0's weights
    if world.size > 1 and not resumed:
        torch.manual_seed(cfg.train.seed + world.rank)  # each rank draws its own dropout masks
    optimizer, rate = build_optimizer(model.parameters(), cfg.train), LearningRate(cfg.train)
    state = runfolder.restore(resumed, optimizer, rate, rank=world.rank) if resumed else LoopState()
    if resumed:  # last.pt may be newer than metrics.jsonl (a kill between the two writes)
        world.on_main(lambda: _write_metrics(out_dir / "metrics.jsonl", state.history))
    run = _Run(cfg, out_dir, world, tokenizers, model, network, optimizer, rate, examples, valid_examples, valid_src,
               valid_tgt)
    report(Preparing("planning", len(examples)))
    plan = _epoch_plan(examples, cfg.train, state.epoch, world.size)  # planned once: 1M pairs take seconds
    report(DataReady(stats, len(valid_src), tokenizers.src.vocab_size, tokenizers.tgt.vocab_size,
                     sum(p.numel() for p in model.parameters()), len(plan), state.step,
                     tuple(tokenizer_cache.used) if tokenizer_cache else ()))
    return _loop(run, state, plan, report, should_stop)


def _check_and_read(
    cfg: Config, out_dir: Path, world_size: int, *, overwrite: bool, resume: bool
) -> tuple[runfolder.Resumed | None, list[str], list[str], list[str], list[str]]:
    resumed = runfolder.check(out_dir, cfg, overwrite=overwrite, resume=resume, world_size=world_size)
    src_lines, tgt_lines = read_parallel(cfg.data.source, cfg.data.target)
    valid_src, valid_tgt = read_parallel(cfg.data.valid_source, cfg.data.valid_target)
    return resumed, src_lines, tgt_lines, valid_src, valid_tgt


def _prepare(out_dir: Path, cfg: Config, *, overwrite: bool) -> None:
    runfolder.prepare(out_dir, overwrite=overwrite)
    with atomic_write(out_dir / "config.toml") as file:
        file.write(to_toml(cfg))


def _loop(run: _Run, state: LoopState, plan: list[list[int]], report: Report, should_stop: StopCheck) -> Finished:
    """Update, report, validate and save until a limit, early stopping, a stop request or too many non-finite steps;
    `plan` holds the batches of the current epoch."""
    settings = run.cfg.train
    start = time.perf_counter() - state.elapsed
    window = _Window()
    run.model.train()
    while True:
        if state.position == len(plan):
            state.epoch, state.position = state.epoch + 1, 0
            plan = _epoch_plan(run.examples, settings, state.epoch, run.world.size)
        step_start = time.perf_counter()
        run.rate.apply(run.optimizer, state.step + 1)
        part, tokens, stand_in = _part(run, plan[state.position])
        try:
            loss, grad_norm, finite = update(run.network, run.optimizer, part, settings, world=run.world,
                                              tokens=tokens, stand_in=stand_in)
        except torch.OutOfMemoryError:
            max_length = f"{run.cfg.data.max_length:,}" if run.cfg.data.max_length else "no limit"
            raise OutOfMemory(
                f"out of memory on {run.world.device} at step {state.step + 1:,}, a batch of {tokens:,} target "
                f"tokens: lower train.batch_tokens (now {settings.batch_tokens:,}) or data.max_length "
                f"(now {max_length}); the checkpoints written so far are intact") from None
        state.step, state.position = state.step + 1, state.position + 1
        state.nonfinite_in_a_row = 0 if finite else state.nonfinite_in_a_row + 1
        window.add(loss * tokens, tokens, grad_norm, settings.clip_norm or math.inf, finite, time.perf_counter() - step_start)
        if not finite:
            report(NonFinite(state.step, loss, grad_norm, state.nonfinite_in_a_row))
        state.elapsed = time.perf_counter() - start
        reason = _stop_reason(state, settings, should_stop, run.world)
        if state.step % settings.log_every == 0 or reason:
            report(window.summary(state.step, state.epoch, state.elapsed))
            window = _Window()
        validate = state.step % settings.valid_every == 0 or reason in LIMITS
        if reason != "non_finite" and (validate or reason) and not _checkpoint(run, state, report, validate=validate):
            reason = "non_finite"
        elif validate and not reason and settings.patience and _validations_without_best(state) >= settings.patience:
            reason = "patience"
        if reason:
            finished = Finished(state.step, reason, run.out_dir / "best.pt", run.out_dir / "last.pt", state.best_bleu,
                                time.perf_counter() - start)
            report(finished)
            return finished


def _part(run: _Run, batch: list[int]) -> tuple[Batch, int, bool]:
    """This rank's part of a planned batch (example indices), the target tokens of the whole batch, and whether
    the part is a stand-in: a rank whose share is empty trains on the batch's first example at weight 0, so
    that it still takes part in DDP's gradient averaging."""
    pairs = [run.examples[i] for i in batch]  # unpacked once, for the count and for this rank's part
    tokens = sum(len(pair.tgt) + 1 for pair in pairs)  # target pieces + EOS, every rank's share
    mine = share(pairs, rank=run.world.rank, ranks=run.world.size)
    return collate(mine or pairs[:1]).to(run.world.device), tokens, not mine


def update(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, settings: TrainConfig, *, world: World = ALONE,
    tokens: int | None = None, stand_in: bool = False,
) -> tuple[float, float, bool]:
    """One update on `batch`: (loss per target token, gradient norm, whether both were finite).

    With several ranks, `batch` is this rank's share of a batch of `tokens` target tokens, and `model` is DDP,
    which averages the ranks' gradients. The summed loss of the share is divided by the whole batch's tokens
    and multiplied by the number of ranks (0 for a stand-in): the update is then the one that one process
    makes on the whole batch, and clipping sees the whole batch's gradient. A NaN or inf loss or gradient
    norm on any rank makes no update on any: the optimizer (and its moments) are left alone.
    """
    tokens = tokens or batch.tgt_tokens
    real = batch.tgt_out != PAD_ID
    with torch.autocast(batch.src.device.type, dtype=torch.bfloat16, enabled=settings.precision == "bf16"):
        logits = model(batch.src, batch.src_lens, batch.tgt_in, real)  # (real target tokens, vocab)
    loss_sum = F.cross_entropy(logits.float(), batch.tgt_out[real], label_smoothing=settings.label_smoothing,
                               reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    (loss_sum * (0 if stand_in else world.size) / tokens).backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm or math.inf))
    total, nonfinite_norms = world.sum([0.0 if stand_in else loss_sum.item(), float(not math.isfinite(grad_norm))])
    finite = math.isfinite(total) and nonfinite_norms == 0
    if finite:
        optimizer.step()
    return total / tokens, grad_norm, finite


def _stop_reason(state: LoopState, settings: TrainConfig, should_stop: StopCheck, world: World) -> str:
    """Why to stop after this step ("" = go on), the same on every rank."""
    if state.nonfinite_in_a_row >= settings.max_nonfinite:
        return "non_finite"  # the ranks agree already: skips are decided together
    # each rank has its own clock and receives its own signals
    return world.most_urgent(state.limit_reached(settings) or should_stop() or "", STOP_RANKING)


def _validations_without_best(state: LoopState) -> int:
    """Validations since the last new best BLEU (early stopping's count, read from the history)."""
    bests = [index for index, row in enumerate(state.history) if row["best"]]
    return len(state.history) - 1 - bests[-1] if bests else len(state.history)


def _checkpoint(run: _Run, state: LoopState, report: Report, *, validate: bool) -> bool:
    """Validate if asked, then save best.pt (on a new best) and step-N.pt (keep_best), last.pt and
    metrics.jsonl, in that order.

    last.pt is what a resumed run starts from, so it is written once the other checkpoints agree with the
    best BLEU and history it records; metrics.jsonl is rebuilt from it on resume. Returns False, saving
    nothing, if the weights are not all finite: a checkpoint never holds NaN or inf weights.
    With several ranks, rank 0 checks, validates and saves (with every rank's RNG state); every rank records
    the result, since the schedule and early stopping depend on it.
    """
    finite, result = run.world.on_main(lambda: _examine(run, state, validate=validate))
    if not finite:
        return False
    info: dict = {}
    if result:
        info = {"valid_bleu": result.bleu, "valid_loss": result.loss, "bleu_signature": result.signature}
        state.history.append({"step": state.step, "epoch": state.epoch, "elapsed_s": round(result.elapsed, 1),
                              "lr": run.optimizer.param_groups[0]["lr"], "valid_loss": result.loss,
                              "valid_ppl": result.perplexity, "valid_bleu": result.bleu,
                              "bleu_signature": result.signature, "best": result.is_best})
        run.rate.after_validation(result.bleu)
        if result.is_best:
            state.best_bleu = result.bleu
    rng_by_rank = run.world.gather(runfolder.rng_state(run.world.device)) if run.world.size > 1 else None
    run.world.on_main(lambda: _save_all(run, state, result, info, rng_by_rank))
    if result:
        report(result)
    return True


def _examine(run: _Run, state: LoopState, *, validate: bool) -> tuple[bool, Validated | None]:
    """Whether the weights are all finite, and, if so and asked, how the model does on the validation set."""
    if not all(bool(torch.isfinite(param).all()) for param in run.model.parameters()):
        return False, None
    return True, _validate(run, state) if validate else None


def _save_all(run: _Run, state: LoopState, result: Validated | None, info: dict, rng_by_rank: list | None) -> None:
    if result and result.is_best:
        _save(run, "best.pt", state.step, info)
    if result:
        _keep_best(run, state, info)
    _save(run, "last.pt", state.step, info,
          training=runfolder.training_state(state, run.optimizer, run.rate, rng_by_rank=rng_by_rank))
    if result:
        _write_metrics(run.out_dir / "metrics.jsonl", state.history)


def _keep_best(run: _Run, state: LoopState, info: dict) -> None:
    """With train.keep_best = N > 1, keep step-N.pt files of the N best validations so far (for `seq2seq average`)."""
    if run.cfg.train.keep_best < 2:
        return
    ranked = sorted(state.history, key=lambda row: (-row["valid_bleu"], row["step"]))  # ties: the earlier step
    if state.step in {row["step"] for row in ranked[: run.cfg.train.keep_best]}:
        _save(run, f"step-{state.step}.pt", state.step, info)
    for row in ranked[run.cfg.train.keep_best :]:
        (run.out_dir / f"step-{row['step']}.pt").unlink(missing_ok=True)


def _save(run: _Run, name: str, step: int, info: dict, training: dict | None = None) -> None:
    checkpoint.save(run.out_dir / name, config=run.cfg, tokenizers=run.tokenizers, model=run.model, step=step,
                    info=info, training=training)


def _epoch_plan(examples: Examples, settings: TrainConfig, epoch: int, ranks: int) -> list[list[int]]:
    """The batches of one epoch; a function of (seed, epoch, ranks) alone, so any epoch can be recreated.

    Every rank plans the same batches, of train.batch_tokens for each rank, and trains on its share of each.
    """
    generator = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
    return plan_batches(examples, batch_tokens=settings.batch_tokens * ranks, generator=generator)


class _Window:
    """Running sums between two progress reports."""

    def __init__(self) -> None:
        self.loss_sum = self.tokens = self.seconds = 0.0
        self.norms: list[float] = []
        self.clipped = self.skipped = 0

    def add(self, loss_sum: float, tokens: int, grad_norm: float, clip_norm: float, finite: bool, seconds: float) -> None:
        self.seconds += seconds
        if not finite:
            self.skipped += 1
            return
        self.loss_sum += loss_sum
        self.tokens += tokens
        self.norms.append(grad_norm)
        self.clipped += grad_norm > clip_norm

    def summary(self, step: int, epoch: int, elapsed: float) -> StepsDone:
        norms = self.norms or [float("nan")]
        return StepsDone(step, epoch, self.loss_sum / max(self.tokens, 1), sum(norms) / len(norms), max(norms),
                         self.clipped, self.skipped, self.tokens / max(self.seconds, 1e-9), elapsed)


def _validate(run: _Run, state: LoopState) -> Validated:
    """Loss and perplexity by teacher forcing; BLEU of greedy translations against the raw references."""
    model = run.model
    model.eval()
    loss_sum, tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(run.valid_examples), 64):
            batch = collate(run.valid_examples[start : start + 64]).to(run.world.device)
            real = batch.tgt_out != PAD_ID
            logits = model(batch.src, batch.src_lens, batch.tgt_in, real)
            loss_sum += float(F.cross_entropy(logits, batch.tgt_out[real], reduction="sum"))
            tokens += batch.tgt_tokens
    model.train()
    hypotheses = translate_all(model, run.tokenizers, run.valid_src, replace(run.cfg.search, beam_size=1))
    bleu, signature = metrics.bleu(hypotheses, run.valid_tgt)
    loss = loss_sum / max(tokens, 1)
    return Validated(state.step, loss, math.exp(min(loss, 50.0)), bleu, signature, bleu > state.best_bleu, state.elapsed)


def _write_metrics(path: Path, history: list[dict]) -> None:
    with atomic_write(path) as file:
        file.writelines(json.dumps(row) + "\n" for row in history)
