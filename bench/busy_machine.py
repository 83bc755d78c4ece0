"""Speed beside a busy program: training and translation alone and beside one busy process, same run.

    python bench/busy_machine.py --data ../shared/data/multi30k --model runs/de-en/best.pt [--rounds 2]

The busy process is one Python loop at normal priority (`while True: pass`), started before a measurement
and stopped after it. Each round measures every setting alone and then beside the busy process, so that the
machine's slow spells fall on all settings alike; the table quotes medians over the rounds, and each
ratio is the median of the rounds' own ratios.

Training: `seq2seq train --config data/recipes/multi30k.toml` (fp32, de->en) for --windows windows of
--window updates after one window of warm-up; its speed is the median window's target tokens per second
as the log reports it (validation excluded). Settings: threads as seq2seq picks them (train.threads = 0:
torch's count on an idle machine, fewer while other programs take cores) and pinned at 2
(`--set train.threads=2`: the behaviour before seq2seq watched the cores).
Translation: `seq2seq translate` of test_2016_flickr at beam 5, fp32 and int8, with its default worker
processes, with `--workers 1` (one process on torch's threads, followed) and `--workers 1 --threads 2`
(pinned: the behaviour before); its speed is the lines/s it reports (model loading excluded).
Run it with nothing else busy.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path


HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "data" / "recipes" / "multi30k.toml"
WINDOW_SPEED = re.compile(r"\| ([\d,]+) tgt tok/s")
LINES_PER_S = re.compile(r"([\d,.]+) lines/s")


@contextmanager
def busy_process() -> Iterator[None]:
    """One busy core's worth of work at normal priority, for as long as the block runs."""
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        loop.kill()
        loop.wait()


def seq2seq(*args: str) -> str:
    """Run a seq2seq command; its stderr (the log)."""
    done = subprocess.run([sys.executable, "-m", "seq2seq", *args], capture_output=True, text=True, check=True)
    return done.stderr


def train_speed(args: argparse.Namespace, scratch: Path, threads: int) -> tuple[float, list[str]]:
    """Median window's target tokens/s after the warm-up window, and the log's lines about threads."""
    valid = scratch / "valid"  # a short validation: it is not timed, and a long one only costs the session
    for side in ("de", "en"):
        lines = subprocess.run(["zcat", str(args.data / f"val.{side}.gz")], capture_output=True, text=True, check=True)
        valid.with_suffix(f".{side}").write_text("".join(lines.stdout.splitlines(keepends=True)[:50]))
    pinned = ["--set", f"train.threads={threads}"] if threads else []
    log = seq2seq("train", "--config", str(RECIPE), "--source", str(args.data / "train.de.gz"),
                  "--target", str(args.data / "train.en.gz"), "--valid-source", str(valid.with_suffix(".de")),
                  "--valid-target", str(valid.with_suffix(".en")), "--output", str(scratch / "run"), "--overwrite",
                  "--max-steps", str(args.window * (args.windows + 1)), "--set", f"train.log_every={args.window}",
                  "--set", "train.valid_every=1000000", *pinned)
    windows = [float(found.replace(",", "")) for found in WINDOW_SPEED.findall(log)][1:]
    return statistics.median(windows), [line for line in log.splitlines() if "thread" in line]


def translate_speed(args: argparse.Namespace, scratch: Path, *options: str) -> tuple[float, list[str]]:
    """The lines/s the command reports, and its lines about threads."""
    log = seq2seq("translate", "-m", str(args.model), "-i", str(args.data / "test_2016_flickr.de.gz"),
                  "-o", str(scratch / "out.en"), "--beam-size", "5", *options)
    return float(LINES_PER_S.findall(log)[-1].replace(",", "")), [line for line in log.splitlines() if "thread" in line]


def settings(args: argparse.Namespace) -> dict[str, Callable[[Path], tuple[float, list[str]]]]:
    """Each measured setting: its name and how to measure it once."""
    found: dict[str, Callable[[Path], tuple[float, list[str]]]] = {}
    if "train" in args.parts:
        found["train, threads followed (default)"] = lambda scratch: train_speed(args, scratch, 0)
        found["train, threads pinned at 2"] = lambda scratch: train_speed(args, scratch, 2)
    if "translate" in args.parts:
        for label, quantize in (("fp32", "none"), ("int8", "int8")):
            for how, options in (("worker processes (default)", []), ("--workers 1", ["--workers", "1"]),
                                 ("--workers 1 --threads 2", ["--workers", "1", "--threads", "2"])):
                found[f"translate {label}, {how}"] = \
                    lambda scratch, chosen=("--quantize", quantize, *options): translate_speed(args, scratch, *chosen)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/multi30k"))
    parser.add_argument("--model", type=Path, default=Path("runs/de-en/best.pt"), help="a Multi30k de->en model")
    parser.add_argument("--parts", nargs="+", choices=["train", "translate"], default=["train", "translate"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--window", type=int, default=15, help="updates per speed window")
    parser.add_argument("--windows", type=int, default=4, help="windows measured after the warm-up window")
    args = parser.parse_args()
    speeds: dict[tuple[str, str], list[float]] = {}
    for round_number in range(1, args.rounds + 1):
        for name, measure in settings(args).items():
            for condition, around in (("alone", nullcontext), ("busy", busy_process)):
                context: AbstractContextManager[None] = around()
                with tempfile.TemporaryDirectory() as scratch, context:
                    speed, notes = measure(Path(scratch))
                speeds.setdefault((name, condition), []).append(speed)
                print(f"round {round_number}: {name}, {condition}: {speed:,.1f}", *notes, sep="\n  ", file=sys.stderr)
    print("| setting | alone | beside one busy process | busy / alone |\n|---|---|---|---|")
    for name in settings(args):
        alone, busy = speeds[(name, "alone")], speeds[(name, "busy")]
        ratio = statistics.median(b / a for a, b in zip(alone, busy))
        print(f"| {name} | {statistics.median(alone):,.1f} | {statistics.median(busy):,.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
