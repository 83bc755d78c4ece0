"""Word and phoneme error rates of a CMUdict letters->phonemes model on the held-out test split.

    python bench/g2p_eval.py runs/cmudict/best.pt [--beam-size 5]

WER: the share of test words whose predicted pronunciation matches none of the dictionary's
pronunciations of that word (data/cmudict/test.phones-all.gz). PER: phoneme edit distance to the
closest pronunciation, over the length of the first one (the usual G2P definitions).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import seq2seq

DATA = Path(__file__).resolve().parents[1] / "data" / "cmudict"


def edit_distance(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        previous, row[0] = row[:], i
        for j, y in enumerate(b, start=1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (x != y))
    return row[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--beam-size", type=int, default=5)
    args = parser.parse_args()
    translator = seq2seq.load(args.model, beam_size=args.beam_size)
    words = seq2seq.read_lines(DATA / "test.letters.gz")
    variants = [line.split(" | ") for line in seq2seq.read_lines(DATA / "test.phones-all.gz")]
    start = time.perf_counter()
    predicted = [best.text for best, *_ in translator.stream(words)]
    seconds = time.perf_counter() - start
    wrong = sum(guess not in options for guess, options in zip(predicted, variants))
    errors = sum(min(edit_distance(guess.split(), ref.split()) for ref in options) for guess, options in zip(predicted, variants))
    phonemes = sum(len(options[0].split()) for options in variants)
    print(f"{args.model}: {len(words):,} test words, beam {args.beam_size}: WER {100 * wrong / len(words):.2f}% "
          f"PER {100 * errors / phonemes:.2f}% ({len(words) / seconds:,.0f} words/s)")


if __name__ == "__main__":
    main()
