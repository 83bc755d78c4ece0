"""The training loop: one top-to-bottom read. It never prints; it reports typed events to a callback.

A run can stop at any step boundary and later continue exactly where it stopped (`resume`): last.pt
carries the whole training state (see `seq2seq.runfolder`). `should_stop` is asked after every update;
the CLI answers it from its Ctrl-C and SIGTERM handlers.

Started by torchrun, the same loop runs in every process (`seq2seq.distributed`): each rank trains on its
share of every batch and DDP averages the gradients; rank 0 alone validates, writes files and reports;
every decision (skip a non-finite update, a new best, stop) is taken once, the same on every rank.

A step is one update. With train.accumulate = N, a planned batch holds N times train.batch_tokens (for each
rank), and each rank cuts its share into N micro-batches, whose gradients add up before the one optimizer
step: the update of one process on the whole batch, with the memory of a batch N times smaller. With
train.ema_decay, validation and the checkpoints use a moving average of the weights (`seq2seq.ema`).

The decoder's per-step layers compute their weight gradients once per batch (`seq2seq.timebatched`, swapped in
here): the same numbers, fewer and larger products.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from seq2seq import distributed, metrics, runfolder
from seq2seq.checkpoint import TrainedModel
from seq2seq.config import Config, TrainConfig, validation_metrics
from seq2seq.cores import CoreWatch
from seq2seq.data import Batch, Example, Examples, collate, plan_batches, share
from seq2seq.distributed import ALONE, World
from seq2seq.ema import WeightAverage
from seq2seq.errors import OutOfMemory
from seq2seq.events import LIMITS, DataReady, Event, Finished, NonFinite, Preparing, Report, StepsDone, Validated
from seq2seq.optim import LearningRate, build_optimizer
from seq2seq.runfolder import LoopState, RunFolder
from seq2seq.startup import start_run
from seq2seq.subwords import SampledPairs
from seq2seq.timebatched import swap_in_step_linears
from seq2seq.tokenizer import PAD_ID, TokenizerCache, Tokenizers
from seq2seq.translator import Translator
# Why a step may end the run, least urgent first; ranks that disagree (their clocks, their signals) take the
# most urgent. A limit outranks a stop request, as in one process: the run then validates before it ends.
SHOWN_EXAMPLES = 3  # validation lines each report shows: first, middle and last
STOP_RANKING = ("", "interrupted", "terminated", "max_time", "max_steps")


StopCheck = Callable[[], "str | None"]


@dataclass(frozen=True)
class _Run:
    """What the loop works with and never reassigns."""

    cfg: Config
    folder: RunFolder
    world: World
    tokenizers: Tokenizers
    model: TrainedModel   # what is validated and saved: never wrapped
    network: nn.Module    # what the training forward goes through: the model, or DDP around it
    translator: Translator  # the model's search at train.valid_beam, for the validation scores
    optimizer: torch.optim.Optimizer
    rate: LearningRate
    examples: Examples
    valid_examples: Examples
    valid_src: list[str]
    valid_tgt: list[str]
    sampled: SampledPairs | None    # the training pairs' text, cut anew each epoch (tokenizer.sampling_alpha)
    average: WeightAverage | None   # the weights' moving average (train.ema_decay), on rank 0
    started_from: dict[str, Any] | None  # a fine-tuned run's model file, recorded in every checkpoint


class MicroBatch(NamedTuple):
    """One forward and backward of an update. A stand-in, for a rank or micro-batch with no examples of its own,
    trains on some example at weight 0: every rank then runs as many backwards, so that DDP's collectives pair up."""

    batch: Batch
    stand_in: bool = False


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
    folder = RunFolder(out_dir)
    with distributed.join(cfg.train.backend, cfg.train.device) as world:
        world.on_main(folder.lock)  # one run per folder: a second is refused before it reads anything
        try:
            return _train(cfg, folder, world, report if world.is_main else _silent, overwrite=overwrite,
                          resume=resume, should_stop=should_stop, tokenizer_cache=tokenizer_cache)
        finally:
            folder.unlock()


def _silent(event: Event) -> None:
    """Ranks other than 0 report nothing: one process speaks for the run."""


def _train(
    cfg: Config, folder: RunFolder, world: World, report: Report, *, overwrite: bool, resume: bool, should_stop: StopCheck,
    tokenizer_cache: TokenizerCache | None,
) -> Finished:
    begun = start_run(cfg, folder, world, overwrite=overwrite, resume=resume, report=report, tokenizer_cache=tokenizer_cache)
    resumed, model = begun.resumed, begun.model
    # Validation's translator is made before DDP wraps the model: it may swap layers (same parameters) in, and so
    # may training, after it (`seq2seq.timebatched`).
    translator = Translator(model, begun.tokenizers, replace(cfg.search, beam_size=cfg.train.valid_beam, quantize="none"),
                            device=world.device)
    swap_in_step_linears(model)
    # Before DDP copies rank 0's weights to the others: a resumed average puts the trained weights back in the model.
    average = WeightAverage(model, cfg.train.ema_decay, resumed.checkpoint.training["ema"] if resumed else None) \
        if cfg.train.ema_decay else None
    network = world.wrap(model)  # every rank starts from rank 0's weights
    if world.size > 1 and not resumed:
        torch.manual_seed(cfg.train.seed + world.rank)  # each rank draws its own dropout masks
    optimizer, rate = build_optimizer(model.parameters(), cfg.train), LearningRate(cfg.train)
    state = runfolder.restore(resumed, optimizer, rate, rank=world.rank) if resumed else LoopState()
    if resumed:  # last.pt may be newer than metrics.jsonl (a kill between the two writes)
        world.on_main(folder.write_metrics, state.history)
    run = _Run(cfg, folder, world, begun.tokenizers, model, network, translator, optimizer, rate, begun.examples,
               begun.valid_examples, begun.valid_src, begun.valid_tgt, begun.sampled, average if world.is_main else None,
               begun.started_from)
    report(Preparing("planning", len(begun.examples)))
    plan = epoch_plan(begun.examples, cfg.train, state.epoch, world.size)  # planned once: 1M pairs take seconds
    report(DataReady(begun.stats, len(begun.valid_src), begun.tokenizers.src.vocab_size, begun.tokenizers.tgt.vocab_size,
                     sum(p.numel() for p in model.parameters()), len(plan), state.step,
                     tuple(tokenizer_cache.used) if tokenizer_cache else (), tuple(folder.unfinished), begun.started_from,
                     cfg.model.language_model, torch.get_num_threads() if world.device.type == "cpu" else 0))
    watch = CoreWatch(report) if not cfg.train.threads and world.device.type == "cpu" else None
    with watch or nullcontext():
        return _loop(run, state, plan, report, should_stop, watch)


def _loop(run: _Run, state: LoopState, plan: list[list[int]], report: Report, should_stop: StopCheck,
          watch: CoreWatch | None) -> Finished:
    """Update, report, validate and save until a limit, early stopping, a stop request or too many non-finite steps;
    `plan` holds the batches of the current epoch; `watch` (on a CPU, threads not pinned) follows the free cores."""
    settings = run.cfg.train
    start = time.perf_counter() - state.elapsed
    window = _Window()
    run.model.train()
    while True:
        if state.position == len(plan):
            state.epoch, state.position = state.epoch + 1, 0
            plan = epoch_plan(run.examples, settings, state.epoch, run.world.size)
        step_start = time.perf_counter()
        run.rate.apply(run.optimizer, state.step + 1)
        pairs = run.sampled.pairs(plan[state.position], state.epoch) if run.sampled else \
            [run.examples[i] for i in plan[state.position]]
        micro_batches, tokens = split(pairs, settings, run.world)
        try:
            loss, grad_norm, finite = update(run.network, run.optimizer, micro_batches, settings, world=run.world,
                                              tokens=tokens)
        except torch.OutOfMemoryError:
            max_length = f"{run.cfg.data.max_length:,}" if run.cfg.data.max_length else "no limit"
            raise OutOfMemory(
                f"out of memory on {run.world.device} at step {state.step + 1:,}, a batch of {tokens:,} target "
                f"tokens: lower train.batch_tokens (now {settings.batch_tokens:,}; raise train.accumulate, now "
                f"{settings.accumulate}, to keep the update's size) or data.max_length (now {max_length}); "
                "the checkpoints written so far are intact") from None
        if finite and run.average:
            run.average.update()
        state.step, state.position = state.step + 1, state.position + 1
        state.nonfinite_in_a_row = 0 if finite else state.nonfinite_in_a_row + 1
        window.add(loss * tokens, tokens, grad_norm, settings.clip_norm or math.inf, finite, time.perf_counter() - step_start)
        if not finite:
            report(NonFinite(state.step, loss, grad_norm, state.nonfinite_in_a_row))
        if watch:
            watch.look()
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
            finished = Finished(state.step, reason, run.folder.best, run.folder.last, _best_scores(state),
                                settings.select_metric, time.perf_counter() - start)
            report(finished)
            return finished


def split(pairs: list[Example], settings: TrainConfig, world: World) -> tuple[list[MicroBatch], int]:
    """This rank's micro-batches of a planned batch's pairs, and the target tokens of the whole batch (every rank's).

    The rank's share is cut into train.accumulate micro-batches, every N-th pair from the k-th: pairs sit in length
    order, so the parts are alike in size and lengths. An empty part (a batch of fewer pairs than ranks x micro-batches)
    is a stand-in on the batch's first pair, at weight 0.
    """
    tokens = sum(len(pair.tgt) + 1 for pair in pairs)  # target pieces + EOS, every rank's share
    mine = share(pairs, rank=world.rank, ranks=world.size)
    parts = [share(mine, rank=k, ranks=settings.accumulate) for k in range(settings.accumulate)]
    return [MicroBatch(collate(part or pairs[:1]).to(world.device), not part) for part in parts], tokens


def update(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch | Sequence[MicroBatch], settings: TrainConfig, *,
    world: World = ALONE, tokens: int | None = None,
) -> tuple[float, float, bool]:
    """One update on `batch`, or on micro-batches whose gradients add up: (loss per target token, gradient norm,
    whether both were finite).

    The micro-batches (`split`) are this rank's parts of a batch of `tokens` target tokens; with several ranks
    `model` is DDP, which averages the ranks' gradients once, in the last backward. Each part's summed loss is
    divided by the whole batch's tokens and multiplied by the number of ranks (0 for a stand-in): the update is
    then the one that one process makes on the whole batch at once, and clipping sees the whole batch's gradient.
    A NaN or inf loss or gradient norm on any rank makes no update on any: the optimizer (and its moments) are
    left alone.
    """
    parts = [MicroBatch(batch)] if isinstance(batch, Batch) else list(batch)
    tokens = tokens or sum(part.batch.tgt_tokens for part in parts)
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for index, part in enumerate(parts):
        with _no_sync(model) if index < len(parts) - 1 else nullcontext():  # DDP averages after the last
            part_loss = _loss_sum(model, part.batch, settings)
            (part_loss * (0 if part.stand_in else world.size) / tokens).backward()
        loss_sum += 0.0 if part.stand_in else part_loss.item()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm or math.inf))
    total, nonfinite_norms = world.sum([loss_sum, float(not math.isfinite(grad_norm))])
    finite = math.isfinite(total) and nonfinite_norms == 0
    if finite:
        optimizer.step()
    return total / tokens, grad_norm, finite


def _loss_sum(model: nn.Module, batch: Batch, settings: TrainConfig) -> torch.Tensor:
    """The label-smoothed cross-entropy of the batch's target tokens, summed."""
    real = batch.tgt_out != PAD_ID
    with torch.autocast(batch.src.device.type, dtype=torch.bfloat16, enabled=settings.precision == "bf16"):
        logits = model(batch.src, batch.src_lens, batch.tgt_in, real)  # (real target tokens, vocab)
    return F.cross_entropy(logits.float(), batch.tgt_out[real], label_smoothing=settings.label_smoothing, reduction="sum")


def _no_sync(model: nn.Module) -> AbstractContextManager[Any]:
    """DDP's pause of its gradient averaging, for all but an update's last backward; nothing for a plain model."""
    return model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) else nullcontext()


def _stop_reason(state: LoopState, settings: TrainConfig, should_stop: StopCheck, world: World) -> str:
    """Why to stop after this step ("" = go on), the same on every rank."""
    if state.nonfinite_in_a_row >= settings.max_nonfinite:
        return "non_finite"  # the ranks agree already: skips are decided together
    # each rank has its own clock and receives its own signals
    return world.most_urgent(state.limit_reached(settings) or should_stop() or "", STOP_RANKING)


def _validations_without_best(state: LoopState) -> int:
    """Validations since the last new best score (early stopping's count, read from the history)."""
    bests = [index for index, row in enumerate(state.history) if row["best"]]
    return len(state.history) - 1 - bests[-1] if bests else len(state.history)


def _best_scores(state: LoopState) -> dict[str, float]:
    """The loss and metrics of the best validation so far, by name ({} before the first)."""
    bests = [row for row in state.history if row["best"]]
    return {key.removeprefix("valid_"): value for key, value in bests[-1].items() if key.startswith("valid_")} if bests else {}


def _checkpoint(run: _Run, state: LoopState, report: Report, *, validate: bool) -> bool:
    """Validate if asked, then save (`RunFolder.save`). Returns False, saving nothing, if the weights are not all
    finite: a checkpoint never holds NaN or inf weights.

    With several ranks, rank 0 checks, validates and saves (with every rank's RNG state); every rank records
    the result, since the schedule and early stopping depend on it.
    """
    finite, result, hypotheses = run.world.on_main(_examine, run, state, validate=validate)
    if not finite:
        return False
    if result:
        state.history.append({"step": state.step, "epoch": state.epoch, "elapsed_s": round(result.elapsed, 1),
                              "lr": run.optimizer.param_groups[0]["lr"], "valid_loss": result.loss,
                              "valid_ppl": result.perplexity, **{f"valid_{name}": value for name, value in result.scores.items()},
                              **{f"{name}_signature": text for name, text in result.signatures.items()},
                              "select_metric": result.metric, "best": result.is_best})
        run.rate.after_validation(result.score if metrics.higher_is_better(result.metric) else -result.score)
        if result.is_best:
            state.best_score = result.score
    rng_by_rank = run.world.gather(runfolder.rng_state(run.world.device)) if run.world.size > 1 else None
    run.world.on_main(_save, run, state, hypotheses=hypotheses, rng_by_rank=rng_by_rank)
    if result:
        report(result)
    return True


def _examine(run: _Run, state: LoopState, *, validate: bool) -> tuple[bool, Validated | None, list[str] | None]:
    """Whether the weights (trained and averaged) are all finite, and, if so and asked, how the model (the average,
    with train.ema_decay) does on the validation set (and its outputs)."""
    with _averaged(run) as trained:
        weights = [*run.model.parameters(), *(trained or {}).values()]
        if not all(bool(torch.isfinite(tensor).all()) for tensor in weights):
            return False, None, None
        return (True, *_validate(run, state)) if validate else (True, None, None)


def _save(run: _Run, state: LoopState, *, hypotheses: list[str] | None, rng_by_rank: list | None) -> None:
    """Save the model (the average, with train.ema_decay; last.pt keeps the trained weights too)."""
    with _averaged(run) as trained:
        average = run.average.state(trained) if run.average and trained else None
        training = runfolder.training_state(state, run.optimizer, run.rate, rng_by_rank=rng_by_rank, average=average)
        facts = {"started_from": run.started_from} if run.started_from else None
        run.folder.save(run.cfg, run.tokenizers, run.model, step=state.step, history=state.history, training=training,
                        hypotheses=hypotheses, facts=facts)


def _averaged(run: _Run) -> AbstractContextManager[dict[str, torch.Tensor] | None]:
    """The moving average in the model for the block, giving the trained weights; with none, the model as it is."""
    return run.average.swapped_in() if run.average else nullcontext()


def epoch_plan(examples: Examples, settings: TrainConfig, epoch: int, ranks: int) -> list[list[int]]:
    """The batches of one epoch, one for each update; a function of (seed, epoch, ranks) alone, so any epoch can be
    recreated.

    Every rank plans the same batches, of train.batch_tokens for each rank and micro-batch (train.accumulate), and
    trains on its share of each.
    """
    generator = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
    return plan_batches(examples, batch_tokens=settings.batch_tokens * settings.accumulate * ranks, generator=generator)


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


def _validate(run: _Run, state: LoopState) -> tuple[Validated, list[str]]:
    """Loss and perplexity by teacher forcing; train.valid_metrics of the translations (beam train.valid_beam)
    against the raw references. Also returns the translations."""
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
    # a language model has no source to translate: its loss (perplexity) is all it is judged by
    hypotheses = [] if run.cfg.model.language_model else [best.text for best, *_ in run.translator.translate(run.valid_src)]
    names = validation_metrics(run.cfg.train)
    results = metrics.corpus_scores(hypotheses, [run.valid_tgt], names) if names else []
    loss = loss_sum / max(tokens, 1)
    metric = run.cfg.train.select_metric
    score = loss if metric == "loss" else next(result.score.score for result in results if result.name == metric)
    best = state.best_score
    is_best = best is None or (score > best if metrics.higher_is_better(metric) else score < best)
    shown = sorted({round(k * (len(hypotheses) - 1) / (SHOWN_EXAMPLES - 1)) for k in range(SHOWN_EXAMPLES)})
    return Validated(
        state.step, loss, math.exp(min(loss, 50.0)), {result.name: result.score.score for result in results},
        {result.name: result.signature for result in results}, metric, is_best,
        state.elapsed, tuple((run.valid_src[i], run.valid_tgt[i], hypotheses[i]) for i in shown if hypotheses),
    ), hypotheses
