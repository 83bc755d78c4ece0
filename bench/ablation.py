"""Why the defaults are what they are: the Multi30k recipe with one thing changed, same training budget.

    python bench/ablation.py --data ../shared/data/multi30k --runs runs/ablation [--rows gru rnn] [--minutes 30]
        [--direction en-de]

Each row trains `seq2seq train --config data/recipes/multi30k.toml --precision bf16 --max-time MINUTES`
(--precision fp32 on a CPU without bf16 units)
with its `--set` changes, de->en (or en->de), then translates test_2016_flickr with the run's best.pt (best
validation BLEU) at beam 5 and greedily, and scores both with sacreBLEU (cased, 13a, detokenized).
Run it with nothing else busy: a second job slows training, and the budget is wall-clock time.
A row already in the results file for that direction (--results, kept in the repository) is not trained again, so the
table can be filled over several sittings; it is printed from that file, with the date of each row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sacrebleu

from seq2seq.textio import read_lines

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "data" / "recipes" / "multi30k.toml"
ROWS = {  # row: (run folder, changes to the recipe)
    "lstm (recipe)": ("recipe", []),
    "gru": ("gru", ["model.cell=gru"]),
    "rnn (tanh)": ("rnn", ["model.cell=rnn"]),
    "no attention": ("no-attention", ["model.attention=none"]),
    "no input feeding": ("no-input-feeding", ["model.input_feeding=false"]),
    "ema 0.999": ("ema", ["train.ema_decay=0.999"]),
    "subword sampling 0.1": ("sampling", ["tokenizer.sampling_alpha=0.1"]),
}


def seq2seq(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "seq2seq", *args], check=True)


def train_row(name: str, args: argparse.Namespace) -> dict:
    """Train one row and measure it; returns the row as stored in the results file."""
    folder, changes = ROWS[name]
    run = args.runs / folder if args.direction == "de-en" else args.runs / args.direction / folder
    source, target = args.direction.split("-")
    settings = [option for change in changes for option in ("--set", change)]
    seq2seq("train", "--config", str(RECIPE), "--source", str(args.data / f"train.{source}.gz"),
            "--target", str(args.data / f"train.{target}.gz"), "--valid-source", str(args.data / f"val.{source}.gz"),
            "--valid-target", str(args.data / f"val.{target}.gz"), "--output", str(run), "--precision", args.precision,
            "--max-time", str(args.minutes), "--quiet", *settings)
    validations = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = max(validations, key=lambda row: row["valid_bleu"])
    references = read_lines(args.data / f"test_2016_flickr.{target}.gz")
    test_bleu = {}
    for beam in (5, 1):
        with tempfile.TemporaryDirectory() as scratch:
            hypotheses = Path(scratch) / "hyp.en"
            seq2seq("translate", "-m", str(run / "best.pt"), "-i", str(args.data / f"test_2016_flickr.{source}.gz"),
                    "-o", str(hypotheses), "--beam-size", str(beam), "-q")
            test_bleu[beam] = sacrebleu.corpus_bleu(read_lines(hypotheses), [references]).score
    return {"row": name, "direction": args.direction, "set": changes, "minutes": args.minutes, "precision": args.precision, "date": time.strftime("%Y-%m-%d"),
            "updates": validations[-1]["step"], "best_step": best["step"], "valid_bleu": best["valid_bleu"],
            "test_beam5": test_bleu[5], "test_greedy": test_bleu[1]}


def direction_of(row: dict) -> str:
    """Rows measured before --direction existed are de->en."""
    return row.get("direction", "de-en")


def table(results: list[dict]) -> str:
    lines = ["| row | direction | changed | updates | best at | valid BLEU (greedy) | test BLEU beam 5 | test BLEU greedy | date |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['row']} | {direction_of(r)} | {' '.join(r['set']) or '-'} | {r['updates']:,} | {r['best_step']:,} | "
                     f"{r['valid_bleu']:.2f} | {r['test_beam5']:.2f} | {r['test_greedy']:.2f} | {r['date']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/multi30k"))
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--direction", choices=["de-en", "en-de"], default="de-en")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                        help="fp32 where the CPU has no bf16 units; keep its rows in their own --results file")
    parser.add_argument("--results", type=Path, default=HERE / "ablation-results.jsonl", help="one JSON line per measured row")
    args = parser.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    store = args.results
    results = [json.loads(line) for line in store.read_text().splitlines()] if store.exists() else []
    done = {(row["row"], direction_of(row)) for row in results}
    for name in args.rows:
        if (name, args.direction) in done:
            print(f"{name}: already measured, kept", file=sys.stderr)
            continue
        row = train_row(name, args)
        with store.open("a") as file:
            file.write(json.dumps(row) + "\n")
        results.append(row)
        print(f"{name}: test BLEU {row['test_beam5']:.2f} (beam 5), {row['test_greedy']:.2f} (greedy)", file=sys.stderr)
    print(table(sorted(results, key=lambda r: (direction_of(r), list(ROWS).index(r["row"])))))


if __name__ == "__main__":
    main()
