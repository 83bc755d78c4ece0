"""Language models: seq2seq's LSTM language model beside an interpolated Kneser-Ney n-gram model on the same pieces.

    python bench/language_model.py --data ../shared/data/multi30k --runs runs/lm --steps 1500

Two tasks: the English side of Multi30k (train on train, perplexity on val and test_2016_flickr), and the
words of the embedded CMUdict (one word a line, spelled in characters; repeated spellings kept once). For each,
`seq2seq train` trains the LSTM model (skipped when its run folder already holds best.pt), the n-gram models
of orders 2 to 5 are counted here on the LSTM model's own pieces (so both predict the same symbols, EOS
included), and the script prints perplexity per piece and per character, then samples of the LSTM model.
"""

from __future__ import annotations

import argparse
import gzip
import math
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import seq2seq
from seq2seq.tokenizer import EOS_ID

PROJECT = Path(__file__).resolve().parents[1]
BOS = -1  # the n-gram model's start of line, before the first piece (ids are from 0 up; EOS is the tokenizer's own)
PROMPTS = {"multi30k-en": ["", "", "", "A man", "Two dogs", "A woman in a red"], "cmudict-words": ["", "", "", "q", "ps", "th"]}


class KneserNey:
    """Interpolated Kneser-Ney (Chen and Goodman 1998, one discount per order: n1 / (n1 + 2 n2)), on piece ids.

    The highest order counts n-grams; the lower orders count the distinct pieces each n-gram follows
    (continuation counts). The unigram level interpolates with the uniform distribution over `vocab`
    symbols, so that no piece has probability zero.
    """

    def __init__(self, lines: Sequence[Sequence[int]], order: int, vocab: int) -> None:
        self.order, self.vocab = order, vocab
        highest: Counter[tuple[int, ...]] = Counter()
        for ids in lines:
            padded = [BOS] * (order - 1) + list(ids) + [EOS_ID]
            highest.update(tuple(padded[i - order + 1 : i + 1]) for i in range(order - 1, len(padded)))
        self.counts = {order: highest}
        for n in range(order - 1, 0, -1):  # continuation counts: how many distinct pieces precede each n-gram
            self.counts[n] = Counter(gram[1:] for gram in self.counts[n + 1])
        self.discounts, self.contexts, self.followers = {}, {}, {}
        for n, counts in self.counts.items():
            ones, twos = sum(c == 1 for c in counts.values()), sum(c == 2 for c in counts.values())
            self.discounts[n] = ones / (ones + 2 * twos) if ones + twos else 0.5
            totals: defaultdict[tuple[int, ...], int] = defaultdict(int)
            kinds: defaultdict[tuple[int, ...], int] = defaultdict(int)
            for gram, count in counts.items():
                totals[gram[:-1]] += count
                kinds[gram[:-1]] += 1
            self.contexts[n], self.followers[n] = totals, kinds

    def probability(self, history: tuple[int, ...], piece: int) -> float:
        """P(piece | the last order - 1 symbols of history), interpolated down to the uniform distribution."""
        p = 1.0 / self.vocab
        for n in range(1, self.order + 1):
            context = history[len(history) - (n - 1) :] if n > 1 else ()
            total = self.contexts[n].get(context, 0)
            if total:
                discount = self.discounts[n]
                p = (max(self.counts[n].get((*context, piece), 0) - discount, 0.0)
                     + discount * self.followers[n][context] * p) / total
        return p

    def log_prob(self, ids: Sequence[int]) -> tuple[float, int]:
        """The natural log-probability of a line's pieces and EOS, and how many symbols that is."""
        history = (BOS,) * (self.order - 1)
        total = 0.0
        for piece in [*ids, EOS_ID]:
            total += math.log(self.probability(history, piece))
            history = (*history[1:], piece) if self.order > 1 else ()
        return total, len(ids) + 1


def read(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as file:
        return file.read().splitlines()


def unique_words(path: Path, into: Path) -> Path:
    """A CMUdict spelling file with each word once (several pronunciations repeat it), in first-seen order."""
    into.write_text("".join(word + "\n" for word in dict.fromkeys(read(path))), encoding="utf-8")
    return into


def train(run: Path, train_file: Path, valid_file: Path, steps: int, extra: list[str]) -> Path:
    best = run / "best.pt"
    if not best.is_file():
        subprocess.run([sys.executable, "-m", "seq2seq", "train", "--target", str(train_file), "--valid-target",
                        str(valid_file), "-o", str(run), "--overwrite", "--max-steps", str(steps), "--valid-every",
                        str(max(steps // 6, 1)), *extra], check=True)
    return best


def perplexities(model: Path, files: dict[str, Path], orders: Sequence[int], train_file: Path) -> list[str]:
    """Markdown rows: each model's perplexity per piece and per character on each file."""
    translator = seq2seq.load(model)
    tokenizer = translator.tokenizers.tgt
    texts = {name: read(path) for name, path in files.items()}
    characters = {name: sum(len(line) + 1 for line in lines) for name, lines in texts.items()}
    rows = []
    cells = []
    for name, lines in texts.items():
        total = seq2seq.Perplexity()
        for scored in translator.score(None, lines):
            total.add(scored)
        cells.append(f"{total.per_piece:.2f} / {total.per_character:.3f}")
    rows.append(f"| LSTM ({model.parent.name}/{model.name}) | {' | '.join(cells)} |")
    training = tokenizer.encode(read(train_file))
    for order in orders:
        counted = KneserNey(training, order, tokenizer.vocab_size)
        cells = []
        for name, lines in texts.items():
            log_prob, pieces = 0.0, 0
            for ids in tokenizer.encode(lines):
                line_log_prob, count = counted.log_prob(ids)
                log_prob, pieces = log_prob + line_log_prob, pieces + count
            cells.append(f"{math.exp(-log_prob / pieces):.2f} / {math.exp(-log_prob / characters[name]):.3f}")
        rows.append(f"| Kneser-Ney, order {order} | {' | '.join(cells)} |")
    return rows


def samples(model: Path, prompts: list[str]) -> list[str]:
    translator = seq2seq.load(model, sample=True, seed=1)
    return [f"{prompt!r} -> {hyps[0].text}" for prompt, hyps in zip(prompts, translator.translate(prompts))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the Multi30k folder (train.en.gz, val.en.gz, ...)")
    parser.add_argument("--runs", type=Path, default=Path("runs/lm"))
    parser.add_argument("--steps", type=int, default=1500, help="updates of each LSTM model")
    parser.add_argument("--orders", type=int, nargs="+", default=[2, 3, 4, 5])
    args = parser.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    cmudict = PROJECT / "data" / "cmudict"
    tasks = {
        "multi30k-en": ({"val": args.data / "val.en.gz", "test": args.data / "test_2016_flickr.en.gz"},
                        args.data / "train.en.gz", []),
        "cmudict-words": ({name: unique_words(cmudict / f"{name}.letters.gz", args.runs / f"cmudict-{name}.txt")
                           for name in ("valid", "test")},
                          unique_words(cmudict / "train.letters.gz", args.runs / "cmudict-train.txt"),
                          ["--tokenizer-type", "char", "--hidden-dim", "256", "--emb-dim", "64"]),
    }
    for task, (files, train_file, extra) in tasks.items():
        first = next(iter(files.values()))
        model = train(args.runs / task, train_file, first, args.steps, extra)
        print(f"\n### {task}: perplexity per piece / per character\n")
        print(f"| model | {' | '.join(files)} |\n|---|{'---|' * len(files)}")
        print("\n".join(perplexities(model, files, args.orders, train_file)))
        print(f"\nSamples (seed 1, temperature 1):\n```\n" + "\n".join(samples(model, PROMPTS[task])) + "\n```")


if __name__ == "__main__":
    main()
