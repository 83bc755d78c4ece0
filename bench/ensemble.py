"""Ensembles against their members: BLEU and speed on Multi30k test_2016_flickr, in one process, one run.

    python bench/ensemble.py /tmp/ens/seed1/best.pt /tmp/ens/seed2/best.pt /tmp/ens/seed3/best.pt

Each model alone, then the first 2, 3, ... together (equal weights), at beam 5 and batch 64, in fp32
with the translator's default CPU speed-ups. BLEU is sacreBLEU's (cased, 13a, detokenized); speed is
decoding sentences/s, the median of --repeats rounds, model loading excluded. The members must share
their tokenizers: train them on the same data with the same tokenizer settings (only train.seed differs).
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import time
from pathlib import Path

import seq2seq

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"


def read(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return [line.rstrip("\n") for line in file]


def measure(models: list[Path], sources: list[str], references: list[str], repeats: int) -> tuple[float, float]:
    """(BLEU, median sentences/s) of these models together (one model: alone)."""
    translator = seq2seq.load(models if len(models) > 1 else models[0], device="cpu", beam_size=5, batch_size=64)
    seconds, outputs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = [best[0].text for best in translator.stream(sources, workers=1)]
        seconds.append(time.perf_counter() - start)
    (bleu,) = seq2seq.corpus_scores(outputs, [references], ["bleu"])
    return bleu.score.score, len(sources) / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sources = read(args.data / "test_2016_flickr.de.gz")
    references = read(args.data / "test_2016_flickr.en.gz")
    rows = [([model], f"{model.parent.name} alone") for model in args.models]
    rows += [(args.models[:size], f"ensemble of the first {size}") for size in range(2, len(args.models) + 1)]
    print("| models | test BLEU | sentences/s | vs first alone |")
    print("|---|---|---|---|")
    first_speed = None
    for models, label in rows:
        bleu, speed = measure(models, sources, references, args.repeats)
        first_speed = first_speed or speed
        print(f"| {label} | {bleu:.2f} | {speed:,.1f} | {speed / first_speed:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
