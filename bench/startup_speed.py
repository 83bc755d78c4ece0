"""Start-up: wall time of `seq2seq --help`, and of translating one sentence in a new process, beside OpenNMT-py.

    python bench/startup_speed.py --model runs/de-en/best.pt \
        --peer-checkpoint /tmp/s2s-peers/runs/onmt-900s/model_step_975.pt

Each command runs --repeats times in a fresh process (the files are in the page cache after the first
run, as they are for a user who translates twice); the table quotes the median and the range.
The peer translates the same sentence, encoded with the shared SentencePiece model, at beam 5.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEERS = Path(os.environ.get("PEERS", "/tmp/s2s-peers"))
SENTENCE = "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt."


def wall_times(command: list[str], stdin: str, repeats: int) -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - start)
        if done.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="our checkpoint (Multi30k de->en)")
    parser.add_argument("--peer-checkpoint", type=Path, help="an OpenNMT-py checkpoint of the same model size")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    seq2seq = [sys.executable, "-m", "seq2seq"]
    rows = [("seq2seq --help", wall_times([*seq2seq, "--help"], "", args.repeats)),
            ("seq2seq translate, one sentence, beam 5",
             wall_times([*seq2seq, "translate", "-m", str(args.model), "-q"], SENTENCE + "\n", args.repeats))]
    if args.peer_checkpoint:
        import sentencepiece

        spm = sentencepiece.SentencePieceProcessor(model_file=str(PEERS / "data" / "spm8k.model"))
        with tempfile.TemporaryDirectory() as scratch:
            source, output = Path(scratch) / "one.sp.de", Path(scratch) / "one.sp.en"
            source.write_text(" ".join(spm.encode(SENTENCE, out_type=str)) + "\n")
            command = [str(PEERS / "onmt" / "bin" / "onmt_translate"), "-model", str(args.peer_checkpoint),
                       "-src", str(source), "-output", str(output), "-beam_size", "5", "-gpu", "-1"]
            rows.append(("OpenNMT-py 3.5.1 onmt_translate, one sentence, beam 5", wall_times(command, "", args.repeats)))
    print(f"threads {os.environ.get('OMP_NUM_THREADS', '2')}; median of {args.repeats} fresh processes")
    print("| command | median, s | fastest, s | slowest, s |")
    print("|---|---|---|---|")
    for name, times in rows:
        print(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} |")


if __name__ == "__main__":
    main()
