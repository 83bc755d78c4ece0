"""Parallel files -> examples -> token-budget batches: nothing lost, nothing doubled, same seed same plan."""

from __future__ import annotations

import random
import re
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest
import torch

from seq2seq import data
from seq2seq.data import Example, Examples, collate, encode_pairs, pad, plan_batches, read_parallel
from seq2seq.errors import DataError
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizers


class WordIds:
    """A stand-in tokenizer with one id per whitespace-separated word, so lengths are easy to state."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [[self.ids.setdefault(word, 4 + len(self.ids)) for word in text.split()] for text in texts]


def random_examples(count: int, *, seed: int, max_len: int = 30) -> list[Example]:
    rng = random.Random(seed)
    return [
        Example([rng.randrange(4, 50) for _ in range(rng.randint(1, max_len))] + [EOS_ID],
                [rng.randrange(4, 50) for _ in range(rng.randint(1, max_len))])
        for _ in range(count)
    ]


def packed(pairs: list[Example]) -> Examples:
    examples = Examples()
    for pair in pairs:
        examples.append(pair.src, pair.tgt)
    return examples


def plan(examples: list[Example], *, batch_tokens: int, seed: int) -> list[list[int]]:
    return plan_batches(packed(examples), batch_tokens=batch_tokens, generator=torch.Generator().manual_seed(seed))


def padded_cost(examples: list[Example]) -> int:
    """What a batch costs: its padded source plus padded target positions."""
    batch = collate(examples)
    return batch.src.numel() + batch.tgt_out.numel()


def test_read_parallel_returns_both_sides(tmp_path: Path) -> None:
    (tmp_path / "a.src").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "a.tgt").write_text("eins\nzwei\n", encoding="utf-8")
    assert read_parallel(tmp_path / "a.src", tmp_path / "a.tgt") == (["one", "two"], ["eins", "zwei"])


def test_read_parallel_of_different_lengths_names_both_files_and_counts(tmp_path: Path) -> None:
    src, tgt = tmp_path / "train.src", tmp_path / "train.tgt"
    src.write_text("a\nb\nc\n", encoding="utf-8")
    tgt.write_text("x\ny\n", encoding="utf-8")

    with pytest.raises(DataError) as error:
        read_parallel(src, tgt)

    message = str(error.value)
    assert re.search(rf"{re.escape(str(src))} has 3 lines", message)
    assert re.search(rf"{re.escape(str(tgt))} has 2", message)


def test_encode_pairs_skips_empty_and_too_long_pairs_and_counts_them() -> None:
    src = ["a b", "", "c", "a b c d e", "d", "e f g"]
    tgt = ["x y", "x", "", "x", "v w x y z", "u v w"]
    words = WordIds()

    examples, stats = encode_pairs(src, tgt, Tokenizers(words, words), max_length=3)

    # kept: "a b"/"x y" and "e f g"/"u v w" (3 pieces is not over 3); empty: 2nd, 3rd; too long: 4th, 5th
    assert (stats.kept, stats.empty, stats.too_long) == (2, 2, 2)
    a, b, e, f, g = (words.ids[w] for w in "abefg")
    x, y, u, v, w = (words.ids[w] for w in "xyuvw")
    assert list(examples) == [Example([a, b, EOS_ID], [x, y]), Example([e, f, g, EOS_ID], [u, v, w])]


def test_encode_pairs_with_max_length_zero_keeps_long_pairs() -> None:
    words = WordIds()
    examples, stats = encode_pairs(["a " * 500], ["b " * 400], Tokenizers(words, words), max_length=0)
    assert stats.kept == 1 and stats.too_long == 0
    assert len(examples[0].src) == 501 and len(examples[0].tgt) == 400


def test_packed_examples_give_back_what_was_packed() -> None:
    pairs = random_examples(50, seed=6)
    examples = packed(pairs)

    assert len(examples) == 50
    assert list(examples) == pairs and examples[-1] == pairs[-1] and examples[10:13] == pairs[10:13]
    src_lens, tgt_lens = examples.lengths()
    assert src_lens.tolist() == [len(p.src) for p in pairs] and tgt_lens.tolist() == [len(p.tgt) for p in pairs]
    with pytest.raises(IndexError):
        examples[50]


def test_encoding_in_parts_gives_the_same_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    src = ["a b", "", "c", "a b c d e", "d", "e f g", "g f", "a"] * 3
    tgt = ["x y", "x", "", "x", "v w x y z", "u v w", "y", "z z"] * 3
    words = WordIds()
    whole, whole_stats = encode_pairs(src, tgt, Tokenizers(words, words), max_length=3)
    monkeypatch.setattr(data, "ENCODED_AT_ONCE", 3)
    parts, parts_stats = encode_pairs(src, tgt, Tokenizers(words, words), max_length=3)
    assert list(parts) == list(whole) and parts_stats == whole_stats
    assert whole_stats.kept == 12


def test_encoded_examples_keep_about_4_bytes_an_id() -> None:
    """Lists of Python ints would keep about 36 bytes an id (1 GB for 1M Multi30k pairs)."""
    src = [" ".join(f"w{(i * 7 + j) % 5000}" for j in range(i % 20 + 1)) for i in range(20_000)]
    words = WordIds()
    words.encode(src)  # the stand-in's own dictionary is not the examples' memory
    tracemalloc.start()
    examples, _ = encode_pairs(src, src, Tokenizers(words, words), max_length=0)
    kept, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    ids = sum(len(example.src) + len(example.tgt) for example in examples)
    assert kept < 10 * ids, (kept, ids)


def test_collate_pads_and_lays_out_bos_and_eos() -> None:
    examples = [Example([5, 6, EOS_ID], [7, 8, 9]), Example([10, EOS_ID], [11]), Example([12, 13, 14, 15, EOS_ID], [16, 17])]

    batch = collate(examples)

    assert batch.src.tolist() == [
        [5, 6, EOS_ID, PAD_ID, PAD_ID],
        [10, EOS_ID, PAD_ID, PAD_ID, PAD_ID],
        [12, 13, 14, 15, EOS_ID],
    ]
    assert batch.src_lens.tolist() == [3, 2, 5]
    # tgt_in = BOS + y, tgt_out = y + EOS: the same length, shifted by one
    assert batch.tgt_in.tolist() == [[BOS_ID, 7, 8, 9], [BOS_ID, 11, PAD_ID, PAD_ID], [BOS_ID, 16, 17, PAD_ID]]
    assert batch.tgt_out.tolist() == [[7, 8, 9, EOS_ID], [11, EOS_ID, PAD_ID, PAD_ID], [16, 17, EOS_ID, PAD_ID]]
    assert batch.tgt_tokens == 4 + 2 + 3


def test_pad_returns_the_true_lengths() -> None:
    padded, lens = pad([[4], [4, 5, 6], []])
    assert padded.tolist() == [[4, PAD_ID, PAD_ID], [4, 5, 6], [PAD_ID, PAD_ID, PAD_ID]]
    assert lens.tolist() == [1, 3, 0]


@pytest.mark.parametrize("batch_tokens", [1, 60, 500, 100_000])
def test_plan_batches_uses_every_example_exactly_once(batch_tokens: int) -> None:
    examples = random_examples(300, seed=1)

    batches = plan(examples, batch_tokens=batch_tokens, seed=0)

    assert all(batches), "no batch is empty"
    assert Counter(i for batch in batches for i in batch) == Counter(range(len(examples)))


@pytest.mark.parametrize("batch_tokens", [60, 200, 1000])
def test_plan_batches_respects_the_token_budget(batch_tokens: int) -> None:
    examples = random_examples(300, seed=2)

    batches = plan(examples, batch_tokens=batch_tokens, seed=0)

    for batch in batches:
        # only an example over the budget on its own may exceed it, and then it travels alone
        assert padded_cost([examples[i] for i in batch]) <= batch_tokens or len(batch) == 1
    assert len(batches) < len(examples), "batches hold several examples where the budget allows"


def test_an_example_over_the_budget_goes_alone() -> None:
    small = random_examples(40, seed=3, max_len=5)
    huge = Example([7] * 200 + [EOS_ID], [8] * 200)
    examples = small[:20] + [huge] + small[20:]

    batches = plan(examples, batch_tokens=100, seed=0)

    assert [20] in batches
    for batch in batches:
        assert batch == [20] or padded_cost([examples[i] for i in batch]) <= 100


def test_the_same_seed_gives_the_same_plan() -> None:
    examples = random_examples(300, seed=4)
    assert plan(examples, batch_tokens=300, seed=11) == plan(examples, batch_tokens=300, seed=11)


def test_a_different_seed_gives_a_different_order() -> None:
    examples = random_examples(300, seed=4)
    first, second = plan(examples, batch_tokens=300, seed=11), plan(examples, batch_tokens=300, seed=12)
    assert first != second


def test_batches_follow_the_order_of_lengths_then_noise_as_earlier_versions_planned() -> None:
    """The plan of a seed and an epoch must not change between versions: a resumed run recreates it. Its
    batches are runs of the examples in order of (source length, target length, noise), the noise drawn
    first from the generator."""
    examples = [Example([5] * (i % 4 + 1) + [EOS_ID], [6] * (i % 3 + 1)) for i in range(200)]  # many ties
    noise = torch.rand(len(examples), generator=torch.Generator().manual_seed(9)).tolist()
    expected = sorted(range(len(examples)), key=lambda i: (len(examples[i].src), len(examples[i].tgt), noise[i]))
    position = {index: place for place, index in enumerate(expected)}

    batches = plan(examples, batch_tokens=40, seed=9)

    assert len(batches) > 10
    assert [i for batch in sorted(batches, key=lambda b: position[b[0]]) for i in batch] == expected


def test_a_different_seed_varies_which_examples_share_a_batch() -> None:
    # many examples of equal lengths: ties broken at random, so each epoch mixes them differently
    examples = [Example([5] * (i % 3 + 1) + [EOS_ID], [6] * (i % 2 + 1)) for i in range(120)]
    first, second = plan(examples, batch_tokens=60, seed=11), plan(examples, batch_tokens=60, seed=12)
    assert sorted(map(sorted, first)) != sorted(map(sorted, second))


def test_batches_group_similar_source_lengths() -> None:
    examples = random_examples(400, seed=5)
    batches = plan(examples, batch_tokens=400, seed=0)

    padded = sum(collate([examples[i] for i in batch]).src.numel() for batch in batches)
    real = sum(len(ex.src) for ex in examples)
    # batches of the same sizes drawn at random (lengths 2-31) would need about 75% more source positions
    assert padded < 1.1 * real
