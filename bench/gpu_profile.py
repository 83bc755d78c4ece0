"""Where a training update's time goes on a GPU: how busy the GPU is, and how many kernels an update launches.

    python bench/gpu_profile.py --data ../shared/data/multi30k

The Multi30k recipe model, on the recipe's batches (length-bucketed, `train.batch_tokens`) and on batches
4x as large, in bf16 autocast and fp32. For each: 20 warm-up updates, then the median wall time of 30
updates (synchronised after each), then 10 updates under `torch.profiler` for the GPU kernel time of an
update. Kernel time over the unprofiled update time is the share of the time the GPU was busy (the
profiler slows the host, not the kernels). A low share means the update is bound by launching kernels
from Python, not by the GPU's arithmetic.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from seq2seq import checkpoint, config
from seq2seq.data import collate, encode_pairs, plan_batches
from seq2seq.optim import build_optimizer
from seq2seq.textio import read_lines
from seq2seq.tokenizer import Tokenizers, train_tokenizers
from seq2seq.training import update

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "data" / "recipes" / "multi30k.toml"
WARMUP, TIMED, PROFILED = 20, 30, 10


def measure(cfg: config.Config, examples: list, tokenizers: Tokenizers, precision: str, batch_tokens: int) -> dict:
    """One setting: median update time, target pieces/s, and the profiled share of GPU-busy time."""
    settings = replace(cfg.train, precision=precision, batch_tokens=batch_tokens)
    cfg = replace(cfg, train=settings)
    torch.manual_seed(settings.seed)
    plan = plan_batches(examples, batch_tokens=batch_tokens, generator=torch.Generator().manual_seed(1))
    model = checkpoint.build_model(cfg, tokenizers).cuda().train()
    optimizer = build_optimizer(model.parameters(), settings)
    batches = [collate([examples[i] for i in batch]).to("cuda") for batch in plan[:WARMUP + TIMED + PROFILED]]
    for batch in batches[:WARMUP]:
        update(model, optimizer, batch, settings)
    torch.cuda.synchronize()
    seconds = []
    for batch in batches[WARMUP:WARMUP + TIMED]:
        start = time.perf_counter()
        update(model, optimizer, batch, settings)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    pieces = sum(batch.tgt_tokens for batch in batches[WARMUP:WARMUP + TIMED])
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiled:
        for batch in batches[WARMUP + TIMED:]:
            update(model, optimizer, batch, settings)
        torch.cuda.synchronize()
    kernels = [event for event in profiled.events() if event.device_type == torch.autograd.DeviceType.CUDA]
    kernel_s = sum(event.device_time for event in kernels) / 1e6 / PROFILED  # device_time is in microseconds
    update_s = statistics.median(seconds)
    return {"update_ms": update_s * 1e3, "pieces_s": pieces / sum(seconds), "gpu_ms": kernel_s * 1e3,
            "busy": kernel_s / update_s, "kernels": len(kernels) / PROFILED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data" / "multi30k")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_profile.py needs a CUDA GPU; this torch sees none")
    warnings.filterwarnings("ignore", message=".*Profiler clears events")  # one cycle is all this profiles
    cfg = config.resolve(RECIPE)
    sources, targets = read_lines(args.data / "train.de.gz"), read_lines(args.data / "train.en.gz")
    tokenizers = train_tokenizers(sources, targets, cfg.tokenizer)
    examples, _ = encode_pairs(sources, targets, tokenizers, max_length=cfg.data.max_length)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {WARMUP} warm-up updates, median of "
          f"{TIMED} timed, {PROFILED} profiled")
    print("| precision | train.batch_tokens | update, ms (median) | target pieces/s | GPU kernel time, ms/update "
          "| GPU busy | kernels/update |")
    print("|---|---|---|---|---|---|---|")
    for precision, batch_tokens in [("bf16", cfg.train.batch_tokens), ("fp32", cfg.train.batch_tokens),
                                    ("bf16", 4 * cfg.train.batch_tokens)]:
        row = measure(cfg, examples, tokenizers, precision, batch_tokens)
        print(f"| {precision} | {batch_tokens:,} | {row['update_ms']:.1f} | {row['pieces_s']:,.0f} | "
              f"{row['gpu_ms']:.1f} | {row['busy']:.0%} | {row['kernels']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
