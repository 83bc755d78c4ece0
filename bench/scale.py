"""Scale: training start-up and streamed translation at 10k, 100k and 1M lines (time and peak memory).

    python bench/scale.py --sizes 10000 100000 1000000 --tokenizers-from runs/de-en/best.pt

Corpora of N pairs are built from Multi30k train: copy i of the 29,000 pairs has the words of every
sentence rotated by i places, so that the lines are distinct (SentencePiece and the length bucketing
see N different sentences) while the vocabulary stays that of real text.

- training: `seq2seq train` with the Multi30k recipe on N pairs, timed until its first update is done
  (reading, SentencePiece training and encoding, batching, building the model, one update), and its
  peak RSS; the run is stopped right after that update. Then a second run on the same pairs, which
  takes the tokenizer from the cache the first one stored it in (a new, empty cache for every size).
- translation: N source lines streamed through `seq2seq translate` on stdin, greedy, with a tiny model
  (random weights, embeddings 16, hidden 32, the Multi30k run's SentencePiece model) that ends every
  output at its first step, so that 1M lines take minutes: every line still goes through reading,
  SentencePiece, batching, the encoder, one decoder step and writing. What is measured is whether
  memory stays flat as the input grows, not decoding speed (that is `translate_speed.py`).
  `--model` streams through a real checkpoint instead (about an hour for 1M lines), and `--precision
  bf16` translates under autocast, whose products compile a kernel for every new shape.
Each measurement is one process under `/usr/bin/time -v`.

    python bench/scale.py --sizes 10000 100000 1000000 --skip-training \
        --model runs/de-en/best.pt --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "data" / "recipes" / "multi30k.toml"


def rotated(line: str, places: int) -> str:
    words = line.split()
    if not words:
        return line
    places %= len(words)
    return " ".join(words[places:] + words[:places])


def write_corpus(data: Path, size: int, folder: Path) -> tuple[Path, Path]:
    from seq2seq.textio import read_lines

    pairs = list(zip(read_lines(data / "train.de.gz"), read_lines(data / "train.en.gz")))
    paths = folder / f"train.{size}.de", folder / f"train.{size}.en"
    with open(paths[0], "w", encoding="utf-8") as src, open(paths[1], "w", encoding="utf-8") as tgt:
        for index in range(size):
            source, target = pairs[index % len(pairs)]
            copy = index // len(pairs)
            src.write(rotated(source, copy) + "\n")
            tgt.write(rotated(target, copy) + "\n")
    return paths


def first_update(source: str, target: str, data: Path, output: str, cache: str) -> None:
    """Child: train until the first update is done, then print the seconds it took from the start."""
    from seq2seq import config
    from seq2seq.allocator import reuse_freed_memory, small_kernel_cache
    from seq2seq.tokenizer import TokenizerCache
    from seq2seq import StepsDone, train

    start = time.perf_counter()
    reuse_freed_memory()  # as `seq2seq train` does
    small_kernel_cache()
    overrides = {"data.source": source, "data.target": target, "data.valid_source": str(data / "val.de.gz"),
                 "data.valid_target": str(data / "val.en.gz"), "train.log_every": 1}
    seconds: list[float] = []

    def report(event: object) -> None:
        if isinstance(event, StepsDone) and not seconds:
            seconds.append(time.perf_counter() - start)

    train(config.resolve(RECIPE, overrides), output, report=report, should_stop=lambda: "interrupted" if seconds else None,
          tokenizer_cache=TokenizerCache(cache))
    print("RESULT " + json.dumps({"first_update_s": seconds[0]}))


def tiny_model(tokenizers_from: Path, path: Path) -> None:
    import torch

    from seq2seq import checkpoint
    from seq2seq.config import Config, ModelConfig
    from seq2seq.tokenizer import EOS_ID

    tokenizers = checkpoint.load(tokenizers_from).tokenizers
    config = Config(model=ModelConfig(emb_dim=16, hidden_dim=32))
    torch.manual_seed(0)
    model = checkpoint.build_model(config, tokenizers)
    with torch.no_grad():
        model.out.bias[EOS_ID] = 20.0  # it ends every output at once: decoding is one step a batch
    checkpoint.save(path, config=config, tokenizers=tokenizers, model=model, step=0)


def timed(command: list[str], stdin_path: Path | None = None) -> tuple[str, float, float]:
    """(output, wall seconds, peak RSS in GiB) of one process under /usr/bin/time -v."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    start = time.perf_counter()
    with open(stdin_path or os.devnull, "rb") as stdin:
        done = subprocess.run(["/usr/bin/time", "-v", *command], stdin=stdin, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    wall = time.perf_counter() - start
    log = done.stdout[-5000:] + done.stderr
    if done.returncode:
        raise SystemExit(f"{command} failed:\n{log[-3000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", log).group(1))
    return log, wall, peak_kib / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data" / "multi30k")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--tokenizers-from", type=Path,
                        help="a Multi30k checkpoint whose SentencePiece model the tiny translation model uses")
    parser.add_argument("--model", type=Path, help="stream through this checkpoint instead of the tiny model")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="translate's --precision")
    parser.add_argument("--skip-training", action="store_true", help="measure the translation only")
    parser.add_argument("--child-train", nargs=4, metavar=("SOURCE", "TARGET", "OUTPUT", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_train:
        source, target, output, cache = args.child_train
        first_update(source, target, args.data, output, cache)
        return
    if not (args.model or args.tokenizers_from):
        parser.error("give --tokenizers-from (for the tiny model) or --model")
    print(f"threads {os.environ.get('OMP_NUM_THREADS', '2')}")
    print(f"| pairs / lines | training: first update done, s | peak RSS, GiB | the same, tokenizer from the cache, s | "
          f"peak RSS, GiB | translate stdin ({args.model or 'tiny model'}, greedy, {args.precision}): "
          "wall, s | lines/s | peak RSS, GiB |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model = args.model or folder / "tiny.pt"
        if not args.model:
            tiny_model(args.tokenizers_from, model)
        for size in args.sizes:  # a row as soon as it is measured: 1M lines take a while
            source, target = write_corpus(args.data, size, folder)
            columns = ["-"] * 4  # first update and peak RSS: tokenizer trained, then from the cache
            if not args.skip_training:
                runs = [timed([sys.executable, __file__, "--data", str(args.data), "--child-train", str(source),
                               str(target), str(folder / f"run{size}-{attempt}"), str(folder / f"cache{size}")])
                        for attempt in ("trained", "cached")]
                columns = []
                for log, _, rss in runs:
                    result = json.loads(re.search(r"^RESULT (.*)$", log, re.M).group(1))
                    columns += [f"{result['first_update_s']:.1f}", f"{rss:.2f}"]
            _, translate_wall, translate_rss = timed([sys.executable, "-m", "seq2seq", "translate", "-m", str(model),
                                                      "--beam-size", "1", "--precision", args.precision, "-q"],
                                                     stdin_path=source)
            print(f"| {size:,} | {' | '.join(columns)} | {translate_wall:.1f} | {size / translate_wall:,.0f} | "
                  f"{translate_rss:.2f} |", flush=True)


if __name__ == "__main__":
    main()
