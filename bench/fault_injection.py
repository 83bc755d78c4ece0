"""Fault injection: real `seq2seq` processes killed, starved of disk, locked out and run side by side.

    python bench/fault_injection.py [--kills 20] [--translate-kills 20] [--rounds 3] [--seed 0] [--out DIR]

On a tiny generated corpus (nothing else is needed), in a scratch folder under DIR:

  train killed       SIGKILL at --kills moments: during tokenizer training, start-up, a save, after a
                     validation, at a random time; each followed by --resume (or a plain rerun)
  translate killed   SIGKILL of `translate -o out.txt` at --translate-kills moments
  full disk          ENOSPC at every file train, translate, average and plot write (the run's lock, config,
                     metrics, checkpoints, validation outputs, tokenizer cache, translation, pictures), at
                     its first byte, part-way and at fsync; then a rerun with room
  read-only folder   the run folder, its parent, an output folder, the tokenizer cache made 0555
  two runs at once   two trains into one folder, a resume beside a run, translate from a best.pt being
                     rewritten, two translates into one file; --rounds times each

After each case every file left must load or read whole (checkpoints through seq2seq's loader), and once a
command ended by itself no temporary file or lock may be left (see faultkit.py for each case's rules).
Prints cases tried and survived per category, writes every case to DIR/results.json, exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # check with the code the processes run: this checkout's
import faultkit  # noqa: E402
from faultkit import Case, Workspace  # noqa: E402


def every_in_turn(moments: tuple[str, ...], count: int) -> list[str]:
    return [moments[number % len(moments)] for number in range(count)]


def all_cases(space: Workspace, args: argparse.Namespace, rng: random.Random, say: Callable[[str], None]) -> list[Case]:
    """Every category in turn, saying how each case went as it goes."""
    cases: list[Case] = []

    def record(new: list[Case]) -> None:
        for case in new:
            mark = "n/a " if not case.reached else "ok  " if case.survived else "FAIL"
            say(f"{mark} {case.category}: {case.name}" + (f" ({case.detail})" if case.detail else ""))
            for problem in case.problems:
                say(f"       {problem}")
        cases.extend(new)

    record(faultkit.kill_training(space, rng, every_in_turn(faultkit.TRAIN_MOMENTS, args.kills)))
    record(faultkit.kill_translation(space, rng, every_in_turn(faultkit.TRANSLATE_MOMENTS, args.translate_kills)))
    for written in faultkit.WRITTEN:
        record([faultkit.full_disk_case(space, written, point, space.run_on_full_disk) for point in faultkit.DISK_POINTS])
    skipped = faultkit.permissions_ignored(space)
    if skipped:
        say(f"read-only folders skipped: {skipped}")
    else:
        record([faultkit.read_only_case(space, name) for name in faultkit.READ_ONLY])
    for _ in range(args.rounds):
        record([faultkit.concurrent_case(space, name, rng) for name in faultkit.CONCURRENT])
    return cases


def table(cases: list[Case]) -> list[str]:
    """Markdown rows: per category, the cases tried (the fault fired), survived, and not reached."""
    rows = ["| category | tried | survived | not reached |", "|---|---|---|---|"]
    categories = dict.fromkeys(case.category for case in cases)
    for category in [*categories, None]:
        chosen = [case for case in cases if category in (None, case.category)]
        tried = [case for case in chosen if case.reached]
        rows.append(f"| {category or '**all**'} | {len(tried)} | {sum(case.survived for case in tried)} | "
                    f"{len(chosen) - len(tried)} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of train (default 20)")
    parser.add_argument("--translate-kills", type=int, default=20, help="SIGKILLs of translate (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the two-runs-at-once cases (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="picks the moments and the corpus (default 0)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "seq2seq-fault-injection",
                        help="results.json goes here; the scratch folder DIR/work is removed at the end unless a case "
                             "failed (default: seq2seq-fault-injection in the temporary folder)")
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        raise SystemExit("error: the fault-injection bench follows processes through /proc: it runs on Linux only")
    work = args.out / "work"
    if work.exists():
        raise SystemExit(f"error: {work} exists (a previous run's scratch folder); remove it or pass another --out")
    work.mkdir(parents=True)
    cases = all_cases(Workspace(work, seed=args.seed), args, random.Random(args.seed), lambda line: print(line, flush=True))
    rows = table(cases)
    print("\n".join(["", *rows]))
    failed = [case for case in cases if not case.survived]
    results = {"date": date.today().isoformat(), "command": " ".join(["python", *sys.argv]), "seed": args.seed,
               "table": rows, "cases": [asdict(case) | {"survived": case.survived} for case in cases]}
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"\nevery case: {args.out / 'results.json'}")
    if failed:
        raise SystemExit(f"error: {len(failed)} case(s) failed; their files are kept in {work}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
