"""Sharded translation at scale: `torchrun --nproc-per-node=N -m seq2seq translate` against one `seq2seq translate`.

    python bench/sharded_translate.py --model runs/cmudict/best.pt --input data/cmudict/train.letters.gz \
        --lines 1000000 --nproc 2

The input's lines, repeated in order until there are --lines of them, are written to a scratch file; then
one command translates it (its defaults: worker processes, one per core) and torchrun's N processes
translate it again (one CPU thread each, gloo, each process its block of lines). Each is one run under
`/usr/bin/time -v`: wall time, lines/s and peak resident memory (for torchrun, its largest process).
The two outputs must be byte for byte the same, and no other file may be left beside the sharded one.
"""

from __future__ import annotations

import argparse
import filecmp
import gzip
import os
import re
import subprocess
import sys
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path


def write_input(source: Path, lines: int, path: Path) -> None:
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8") as file:
        given = file.read().splitlines()
    path.write_text("".join(f"{line}\n" for line in islice(cycle(given), lines)), encoding="utf-8")


def timed(command: list[str], threads: int | None) -> tuple[float, float]:
    """(wall seconds, peak RSS in GiB) of `command` under /usr/bin/time -v; the run must succeed."""
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", CUDA_VISIBLE_DEVICES="")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return wall, peak_kib / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--input", type=Path, required=True, help="source lines (.gz read as gzip), repeated to --lines")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--nproc", type=int, default=2, help="torchrun's processes")
    parser.add_argument("--beam-size", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        source = folder / "input.txt"
        write_input(args.input, args.lines, source)
        translate = ["-m", "seq2seq", "translate", "-m", str(args.model), "-i", str(source), "--beam-size",
                     str(args.beam_size), "-q"]
        sharded_folder = folder / "sharded"
        sharded_folder.mkdir()
        runs = {
            "seq2seq translate (one process, its worker processes)":
                timed([sys.executable, *translate, "-o", str(folder / "one.txt")], threads=None),
            f"torchrun --nproc-per-node={args.nproc} (1 thread each)":
                timed([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
                       *translate, "-o", str(sharded_folder / "sharded.txt")], threads=1),
        }
        same = filecmp.cmp(folder / "one.txt", sharded_folder / "sharded.txt", shallow=False)
        alone = [path.name for path in sharded_folder.iterdir()] == ["sharded.txt"]
    print(f"{args.lines:,} lines of {args.input.name}, {args.model}, beam {args.beam_size}")
    print("| command | wall, s | lines/s | peak RSS, GiB |\n|---|---|---|---|")
    one_process_wall = next(iter(runs.values()))[0]  # the ratios' baseline
    for name, (wall, rss) in runs.items():
        print(f"| {name} | {wall:,.1f} | {args.lines / wall:,.0f} ({one_process_wall / wall:.2f}x) | {rss:.2f} |")
    print(f"outputs byte for byte the same: {same}; nothing but the output left beside it: {alone}")
    if not (same and alone):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
