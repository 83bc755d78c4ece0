"""Adapting a trained model to a domain: what a few minutes of fine-tuning (`--init-from`) gain on the domain and
cost elsewhere, against the model it started from and against that model trained as long again on its own data.

    python bench/adapt.py --data ../shared/data/multi30k --runs runs/adapt [--base-minutes 30] [--tune-minutes 5]

The domain is held apart from Multi30k de->en: the training pairs whose English side is about sports (a
ball, a team, a bike, a skier, ...; DOMAIN below), about 4,600 of the 29,000. They are shuffled (seed 1)
and cut into domain.test (1,000 pairs), domain.valid (500) and domain.train (the rest, about 3,100).

1. base: the Multi30k recipe trained for --base-minutes on the other 24,400 pairs, validated on val's
   pairs outside the domain.
2. tuned: `seq2seq train --init-from base/best.pt` on domain.train for --tune-minutes, validated on
   domain.valid (a lower learning rate, --tune-lr, and a validation every --tune-valid-every updates).
3. base, trained on: the base run resumed on its own data for --tune-minutes more (`--resume` with a
   higher --max-time): whether the gain is the domain's or only more training's.

Each model's best.pt translates, at beam 5, domain.test and the general test: test_2016_flickr's pairs
outside the domain (832 of 1,000); sacreBLEU (cased, 13a, detokenized) scores them. The table shows both
BLEUs and how many updates each model had. A run that has trained its minutes is not run again (one that
was stopped is started again), so the script can be continued after a stop; the results go to --results as
one JSON object. Run it with nothing else busy: the budgets are wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sacrebleu

from seq2seq.textio import read_lines

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "data" / "recipes" / "multi30k.toml"
DOMAIN = re.compile(r"\b(ball|balls|soccer|football|basketball|baseball|tennis|hockey|rugby|volleyball|player|players|"
                    r"team|teams|game|match|race|racing|goal|bat|court|field|jersey|uniforms?|skateboard\w*|"
                    r"snowboard\w*|ski\w*|surf\w*|bike|bicycle|bmx|rider|athlete\w*)\b", re.IGNORECASE)
TEST_PAIRS, VALID_PAIRS = 1000, 500


def seq2seq(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "seq2seq", *args], check=True)


def write(folder: Path, name: str, pairs: list[tuple[str, str]]) -> tuple[str, str]:
    """`pairs` as folder/name.de and folder/name.en; returns the two paths."""
    paths = str(folder / f"{name}.de"), str(folder / f"{name}.en")
    for path, side in zip(paths, zip(*pairs)):
        Path(path).write_text("".join(line + "\n" for line in side), encoding="utf-8")
    return paths


def split(data: Path, folder: Path) -> dict[str, tuple[str, str]]:
    """The held-apart domain and the rest, written as parallel files: name -> (de path, en path)."""
    def pairs(name: str) -> list[tuple[str, str]]:
        return list(zip(read_lines(data / f"{name}.de.gz"), read_lines(data / f"{name}.en.gz")))

    folder.mkdir(parents=True, exist_ok=True)
    train = pairs("train")
    domain = [pair for pair in train if DOMAIN.search(pair[1])]
    random.Random(1).shuffle(domain)
    return {
        "general.train": write(folder, "general.train", [pair for pair in train if not DOMAIN.search(pair[1])]),
        "general.valid": write(folder, "general.valid", [pair for pair in pairs("val") if not DOMAIN.search(pair[1])]),
        "general.test": write(folder, "general.test", [pair for pair in pairs("test_2016_flickr") if not DOMAIN.search(pair[1])]),
        "domain.test": write(folder, "domain.test", domain[:TEST_PAIRS]),
        "domain.valid": write(folder, "domain.valid", domain[TEST_PAIRS:TEST_PAIRS + VALID_PAIRS]),
        "domain.train": write(folder, "domain.train", domain[TEST_PAIRS + VALID_PAIRS:]),
    }


def trained(run: Path, minutes: float) -> bool:
    """Whether the run in `run` has trained `minutes` (its last validation came at --max-time)."""
    metrics = run / "metrics.jsonl"
    return metrics.exists() and json.loads(metrics.read_text(encoding="utf-8").splitlines()[-1])["elapsed_s"] >= minutes * 60 - 1


def train(run: Path, minutes: float, files: dict[str, tuple[str, str]], train_on: str, valid_on: str, *options: str) -> None:
    if trained(run, minutes):
        print(f"{run}: trained already, kept", file=sys.stderr)
        return
    (source, target), (valid_source, valid_target) = files[train_on], files[valid_on]
    seq2seq("train", "--config", str(RECIPE), "--source", source, "--target", target, "--valid-source", valid_source,
            "--valid-target", valid_target, "--output", str(run), "--overwrite", "--max-time", str(minutes), "--quiet",
            *options)


def bleu(model: Path, files: dict[str, tuple[str, str]], name: str) -> float:
    source, target = files[name]
    with tempfile.TemporaryDirectory() as scratch:
        hypotheses = Path(scratch) / "hyp.en"
        seq2seq("translate", "-m", str(model), "-i", source, "-o", str(hypotheses), "--beam-size", "5", "-q")
        return sacrebleu.corpus_bleu(read_lines(hypotheses), [read_lines(target)]).score


def updates(run: Path) -> int:
    return json.loads((run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()[-1])["step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/multi30k"))
    parser.add_argument("--runs", type=Path, default=Path("runs/adapt"))
    parser.add_argument("--base-minutes", type=float, default=30.0)
    parser.add_argument("--tune-minutes", type=float, default=5.0)
    parser.add_argument("--tune-lr", type=float, default=0.0005)
    parser.add_argument("--tune-valid-every", type=int, default=50)
    parser.add_argument("--precision", default="bf16", help="fp32 where the CPU has no bf16 units")
    parser.add_argument("--results", type=Path, default=HERE / "adapt-results.json")
    args = parser.parse_args()
    files = split(args.data, args.runs / "data")
    precision = ("--precision", args.precision)

    base, tuned, longer = args.runs / "base", args.runs / "tuned", args.runs / "base-longer"
    train(base, args.base_minutes, files, "general.train", "general.valid", *precision)
    train(tuned, args.tune_minutes, files, "domain.train", "domain.valid", "--init-from", str(base / "best.pt"),
          "--valid-every", str(args.tune_valid_every), "--set", f"train.lr={args.tune_lr}", *precision)
    if not trained(longer, args.base_minutes + args.tune_minutes):
        if not longer.exists():
            shutil.copytree(base, longer)
        seq2seq("train", "--output", str(longer), "--resume", "--max-time", str(args.base_minutes + args.tune_minutes),
                "--quiet")

    rows = []
    for label, run in (("base", base), (f"base + {args.tune_minutes:g} min on its own data", longer),
                       (f"base + {args.tune_minutes:g} min fine-tuned on the domain", tuned)):
        rows.append({"model": label, "updates": updates(run), "domain_test_bleu": bleu(run / "best.pt", files, "domain.test"),
                     "general_test_bleu": bleu(run / "best.pt", files, "general.test")})
    args.results.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "base_minutes": args.base_minutes,
                                        "tune_minutes": args.tune_minutes, "tune_lr": args.tune_lr, "rows": rows}, indent=1) + "\n")
    print("| model | updates | domain test BLEU | general test BLEU |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['updates']:,} | {row['domain_test_bleu']:.2f} | {row['general_test_bleu']:.2f} |")


if __name__ == "__main__":
    main()
