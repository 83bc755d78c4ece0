"""The training loop: one top-to-bottom read. It never prints; it reports typed events to a callback."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from seq2seq import checkpoint, metrics
from seq2seq.config import Config, to_toml
from seq2seq.data import Example, FilterStats, collate, encode_pairs, plan_batches, read_parallel
from seq2seq.errors import ConfigError, DataError
from seq2seq.model import Seq2Seq
from seq2seq.textio import atomic_write
from seq2seq.tokenizer import PAD_ID, Tokenizers, train_tokenizers
from seq2seq.translation import translate_all

RUN_FILES = ("config.toml", "metrics.jsonl", "best.pt", "last.pt")


@dataclass(frozen=True)
class DataReady:
    train: FilterStats
    valid_pairs: int
    src_vocab: int
    tgt_vocab: int
    parameters: int
    batches_per_epoch: int


@dataclass(frozen=True)
class StepsDone:
    step: int
    epoch: int
    loss: float          # training loss per target token over the last `log_every` steps
    grad_norm: float     # mean global gradient norm before clipping, over the same steps
    grad_norm_max: float
    clipped: int         # how many of those steps were rescaled to clip_norm
    skipped: int         # steps whose loss or gradient was not finite (no update made)
    tokens_per_s: float  # target tokens per second of wall clock, validation excluded
    elapsed: float       # seconds since training started


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
    step: int
    reason: str          # "max_steps" | "max_time"
    best_path: Path
    last_path: Path
    best_bleu: float
    elapsed: float


Event = DataReady | StepsDone | Validated | Finished
Report = Callable[[Event], None]


def prepare_run_folder(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse to train into a folder that holds a run, unless told to overwrite it."""
    existing = [name for name in RUN_FILES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{out_dir} already holds a run ({', '.join(existing)}); pass --overwrite to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in existing:
        (out_dir / name).unlink()


def train(cfg: Config, out_dir: str | Path, *, report: Report = lambda event: None, overwrite: bool = False) -> Finished:
    """Train from cfg.data into `out_dir` (config.toml, metrics.jsonl, best.pt, last.pt)."""
    data, settings = cfg.data, cfg.train
    if not (data.source and data.target and data.valid_source and data.valid_target):
        raise ConfigError("training needs data.source, data.target, data.valid_source and data.valid_target")
    out_dir = Path(out_dir)
    prepare_run_folder(out_dir, overwrite=overwrite)
    with atomic_write(out_dir / "config.toml") as file:
        file.write(to_toml(cfg))
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)

    src_lines, tgt_lines = read_parallel(data.source, data.target)
    valid_src, valid_tgt = read_parallel(data.valid_source, data.valid_target)
    tokenizers = train_tokenizers(src_lines, tgt_lines, cfg.tokenizer)
    examples, stats = encode_pairs(src_lines, tgt_lines, tokenizers, max_length=data.max_length)
    if not examples:
        raise DataError(f"{data.source}: no usable training pairs ({stats.empty} empty, {stats.too_long} too long)")
    valid_examples, _ = encode_pairs(valid_src, valid_tgt, tokenizers, max_length=0)
    model = checkpoint.build_model(cfg, tokenizers)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    batch_plan = _epoch_plan(examples, settings.batch_tokens, settings.seed, epoch=1)
    report(DataReady(stats, len(valid_src), tokenizers.src.vocab_size, tokenizers.tgt.vocab_size,
                     sum(p.numel() for p in model.parameters()), len(batch_plan)))

    history: list[dict] = []
    best_bleu, best_path, last_path = -1.0, out_dir / "best.pt", out_dir / "last.pt"
    step, epoch, position = 0, 1, 0
    start = time.perf_counter()
    window = _Window()
    model.train()
    while True:
        if position == len(batch_plan):
            epoch, position = epoch + 1, 0
            batch_plan = _epoch_plan(examples, settings.batch_tokens, settings.seed, epoch)
        batch = collate([examples[i] for i in batch_plan[position]])
        position += 1
        step_start = time.perf_counter()
        logits = model(batch.src, batch.src_lens, batch.tgt_in)
        tokens = batch.tgt_tokens
        loss = F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID,
                               label_smoothing=settings.label_smoothing, reduction="sum") / tokens
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm))
        finite = math.isfinite(grad_norm) and math.isfinite(loss.item())
        if finite:
            optimizer.step()
        step += 1
        window.add(loss.item() * tokens if finite else 0.0, tokens, grad_norm, settings.clip_norm, finite,
                   time.perf_counter() - step_start)

        elapsed = time.perf_counter() - start
        reason = _stop_reason(step, elapsed, settings.max_steps, settings.max_time)
        if step % settings.log_every == 0 or reason:
            report(window.summary(step, epoch, elapsed))
            window = _Window()
        if step % settings.valid_every == 0 or reason:
            result = _validate(model, tokenizers, valid_examples, valid_src, valid_tgt, cfg, step, elapsed, best_bleu)
            info = {"valid_bleu": result.bleu, "valid_loss": result.loss, "bleu_signature": result.signature}
            checkpoint.save(last_path, config=cfg, tokenizers=tokenizers, model=model, step=step, info=info)
            if result.is_best:
                best_bleu = result.bleu
                checkpoint.save(best_path, config=cfg, tokenizers=tokenizers, model=model, step=step, info=info)
            history.append({"step": step, "epoch": epoch, "elapsed_s": round(elapsed, 1),
                            "valid_loss": result.loss, "valid_ppl": result.perplexity,
                            "valid_bleu": result.bleu, "bleu_signature": result.signature, "best": result.is_best})
            _write_metrics(out_dir / "metrics.jsonl", history)
            report(result)
        if reason:
            finished = Finished(step, reason, best_path, last_path, best_bleu, time.perf_counter() - start)
            report(finished)
            return finished


def _epoch_plan(examples: list[Example], batch_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch; a function of (seed, epoch) alone, so any epoch can be recreated."""
    return plan_batches(examples, batch_tokens=batch_tokens, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def _stop_reason(step: int, elapsed: float, max_steps: int, max_minutes: float) -> str:
    if max_steps and step >= max_steps:
        return "max_steps"
    if max_minutes and elapsed >= max_minutes * 60:
        return "max_time"
    return ""


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


def _validate(
    model: Seq2Seq, tokenizers: Tokenizers, examples: list[Example], src_lines: list[str], tgt_lines: list[str],
    cfg: Config, step: int, elapsed: float, best_bleu: float,
) -> Validated:
    """Loss and perplexity by teacher forcing; BLEU of greedy translations against the raw references."""
    model.eval()
    loss_sum, tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(examples), 64):
            batch = collate(examples[start : start + 64])
            logits = model(batch.src, batch.src_lens, batch.tgt_in)
            loss_sum += float(F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID, reduction="sum"))
            tokens += batch.tgt_tokens
    model.train()
    hypotheses = translate_all(model, tokenizers, src_lines, replace(cfg.search, beam_size=1))
    bleu, signature = metrics.bleu(hypotheses, tgt_lines)
    loss = loss_sum / max(tokens, 1)
    return Validated(step, loss, math.exp(min(loss, 50.0)), bleu, signature, bleu > best_bleu, elapsed)


def _write_metrics(path: Path, history: list[dict]) -> None:
    with atomic_write(path) as file:
        file.writelines(json.dumps(row) + "\n" for row in history)
