"""Training throughput on Multi30k de->en: our recipe model beside OpenNMT-py's same-size model, same run.

    python bench/train_speed.py --tokenizers-from runs/de-en/best.pt --peer

Each system trains for --warmup updates, then for --windows windows of --steps updates each; a window's
speed is its target pieces (EOS included) over its wall time, and the table quotes the median window.
Source+target pieces/s are counted the same way. Every measurement is its own process under
`/usr/bin/time -v`, whose peak RSS is quoted. Ours trains on batches planned by `train.batch_tokens`
(length-bucketed), as `seq2seq train` does; the peer on its shared protocol (128 sentences a batch),
timed from its own log lines (one every 25 updates). Validation, saving and start-up are excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

PEERS = Path(os.environ.get("PEERS", "/tmp/s2s-peers"))
HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "data" / "recipes" / "multi30k.toml"


def measure_ours(args: argparse.Namespace) -> dict:
    """One measurement in this process (run as a child of `main`, so that peak RSS is its own)."""
    import torch

    from seq2seq import checkpoint, config
    from seq2seq.allocator import reuse_freed_memory, small_kernel_cache
    from seq2seq.data import collate, encode_pairs, plan_batches
    from seq2seq.optim import build_optimizer
    from seq2seq.textio import read_lines
    from seq2seq.timebatched import swap_in_step_linears
    from seq2seq.tokenizer import train_tokenizers
    from seq2seq.training import update

    reuse_freed_memory()  # as `seq2seq train` does
    small_kernel_cache()
    cfg = config.resolve(RECIPE)
    cfg = replace(cfg, train=replace(cfg.train, precision=args.precision[0]))  # a child measures one
    src = read_lines(args.data / "train.de.gz")
    tgt = read_lines(args.data / "train.en.gz")
    tokenizers = (checkpoint.load(args.tokenizers_from).tokenizers if args.tokenizers_from
                  else train_tokenizers(src, tgt, cfg.tokenizer))
    examples, _ = encode_pairs(src, tgt, tokenizers, max_length=cfg.data.max_length)
    torch.manual_seed(cfg.train.seed)
    plan = plan_batches(examples, batch_tokens=cfg.train.batch_tokens, generator=torch.Generator().manual_seed(1))
    model = checkpoint.build_model(cfg, tokenizers).train()
    if not args.plain_steps:
        swap_in_step_linears(model)  # as `seq2seq train` does
    optimizer = build_optimizer(model.parameters(), cfg.train)
    batches = iter(plan)

    def run(steps: int) -> tuple[float, int, int]:
        target = both = 0
        start = time.perf_counter()
        for _ in range(steps):
            batch = collate([examples[i] for i in next(batches)])
            update(model, optimizer, batch, cfg.train)
            target += batch.tgt_tokens
            both += batch.tgt_tokens + int(batch.src_lens.sum())
        return time.perf_counter() - start, target, both

    run(args.warmup)
    windows = [run(args.steps) for _ in range(args.windows)]
    return {"tgt_tok_s": [t / s for s, t, _ in windows], "all_tok_s": [b / s for s, _, b in windows]}


def measure_peer(args: argparse.Namespace, scratch: Path) -> dict:
    """OpenNMT-py for warmup + windows * steps updates; its log line every 25 updates carries its own tok/s."""
    base = (HERE.parents[1] / "shared" / "bench" / "peers" / "onmt_lstm.yaml").read_text()
    run = scratch / "onmt"
    settings = base.replace("@PEERS@", str(PEERS)).replace("@RUN@", str(run))
    total = args.warmup + args.windows * args.steps
    settings = re.sub(r"(?m)^train_steps:.*$", f"train_steps: {total}", settings)
    settings = re.sub(r"(?m)^valid_steps:.*$", f"valid_steps: {total + 1}", settings)
    settings = re.sub(r"(?m)^save_checkpoint_steps:.*$", f"save_checkpoint_steps: {total + 1}", settings)
    config_file = scratch / "onmt.yaml"
    config_file.write_text(settings)
    done = _timed([str(PEERS / "onmt" / "bin" / "onmt_train"), "-config", str(config_file)])
    # "Step 50/ 1000; acc: ...; ppl: ...; xent: ...; lr: ...; sents: ...; bsz: .../.../...; 1234/2345 tok/s; 67 sec"
    steps = [(int(step), float(src), float(tgt), float(secs)) for step, src, tgt, secs in
             re.findall(r"Step (\d+)/\s*\d+;.*?(\d+)/\s*(\d+) tok/s;\s*(\d+) sec", done["log"])]
    timed = [row for row in steps if row[0] > args.warmup]
    if not timed:
        raise SystemExit(f"onmt_train printed no throughput lines after step {args.warmup}:\n{done['log'][-2000:]}")
    return {"tgt_tok_s": [tgt for _, _, tgt, _ in timed], "all_tok_s": [src + tgt for _, src, tgt, _ in timed],
            "peak_rss_gib": done["peak_rss_gib"]}


def _timed(command: list[str]) -> dict:
    """Run under /usr/bin/time -v with 2 threads; the combined log and the peak RSS in GiB."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, env=env)
    log = done.stdout + done.stderr
    if done.returncode:
        raise SystemExit(f"{command[0]} failed:\n{log[-3000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", log).group(1))
    return {"log": log, "peak_rss_gib": peak_kib / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data" / "multi30k")
    parser.add_argument("--tokenizers-from", type=Path, help="reuse a checkpoint's SentencePiece models "
                        "(saves training them; the model itself is always fresh)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--warmup", type=int, default=25)
    parser.add_argument("--steps", type=int, default=25, help="updates per timed window")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--plain-steps", action="store_true", help="train without seq2seq.timebatched (the "
                        "per-step layers' weight gradients step by step, as before it)")
    parser.add_argument("--peer", action="store_true", help="also measure OpenNMT-py (set up by ../shared/bench/peers)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure_ours(args)))
        return
    rows = []
    for precision in args.precision:
        command = [sys.executable, __file__, "--child", "--data", str(args.data), "--precision", precision,
                   "--warmup", str(args.warmup), "--steps", str(args.steps), "--windows", str(args.windows)]
        command += ["--plain-steps"] if args.plain_steps else []
        if args.tokenizers_from:
            command += ["--tokenizers-from", str(args.tokenizers_from)]
        done = _timed(command)
        result = json.loads(re.search(r"^RESULT (.*)$", done["log"], re.M).group(1))
        rows.append((f"seq2seq {precision}", {**result, "peak_rss_gib": done["peak_rss_gib"]}))
    if args.peer:
        with tempfile.TemporaryDirectory() as scratch:
            rows.append(("OpenNMT-py 3.5.1 fp32", measure_peer(args, Path(scratch))))
    peer_speed = statistics.median(rows[-1][1]["tgt_tok_s"]) if args.peer else None
    print(f"threads {os.environ.get('OMP_NUM_THREADS', '2')}; {args.warmup} warm-up updates, then the median of "
          f"{args.windows if not args.peer else 'all'} windows of {args.steps} updates (peer: of 25)")
    print("| system | target pieces/s | source+target pieces/s | vs peer | peak RSS, GiB | windows, target pieces/s |")
    print("|---|---|---|---|---|---|")
    for name, row in rows:
        speed = statistics.median(row["tgt_tok_s"])
        ratio = f"{speed / peer_speed:.2f}x" if peer_speed else ""
        print(f"| {name} | {speed:,.0f} | {statistics.median(row['all_tok_s']):,.0f} | {ratio} | "
              f"{row['peak_rss_gib']:.2f} | {[round(s) for s in row['tgt_tok_s']]} |")


if __name__ == "__main__":
    main()
