"""The SentencePiece wrapper: reversible on ordinary text, fixed special ids, joint or per-side models."""

from __future__ import annotations

import pytest

from seq2seq.config import TokenizerConfig
from seq2seq.errors import DataError
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, Tokenizers, train_tokenizers

SPECIAL_PIECES = ["<pad>", "<unk>", "<s>", "</s>"]


def test_special_ids_are_pad_0_unk_1_bos_2_eos_3(tokenizers: Tokenizers) -> None:
    tokenizer = tokenizers.src
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    assert tokenizer.pieces([0, 1, 2, 3]) == SPECIAL_PIECES


def test_ordinary_text_round_trips(tokenizers: Tokenizers, corpus: tuple[list[str], list[str]], make_pairs) -> None:
    src, tgt = corpus
    # seen sentences, and new sentences made of the same words and letters
    new_src, new_tgt = make_pairs(50, seed=123)
    texts = src[:50] + tgt[:50] + new_src + new_tgt + ["stone dog", "TAC"]
    tokenizer = tokenizers.src

    assert tokenizer.decode(tokenizer.encode(texts)) == texts


def test_encoding_ordinary_text_never_yields_special_ids(tokenizers: Tokenizers, corpus) -> None:
    ids = tokenizers.src.encode(corpus[0] + corpus[1])
    assert all(i not in (PAD_ID, UNK_ID, BOS_ID, EOS_ID) for seq in ids for i in seq)
    assert all(0 < i < tokenizers.src.vocab_size for seq in ids for i in seq)


def test_an_unseen_character_becomes_unk(tokenizers: Tokenizers) -> None:
    (ids,) = tokenizers.src.encode(["cat €"])
    assert UNK_ID in ids


def test_empty_text_encodes_to_no_ids(tokenizers: Tokenizers) -> None:
    assert tokenizers.src.encode([""]) == [[]]
    assert tokenizers.src.decode([[]]) == [""]


def test_the_model_bytes_rebuild_the_same_tokenizer(tokenizers: Tokenizers, corpus: tuple[list[str], list[str]]) -> None:
    rebuilt = Tokenizer(tokenizers.src.model_proto)
    assert rebuilt.vocab_size == tokenizers.src.vocab_size
    assert rebuilt.encode(corpus[0][:20]) == tokenizers.src.encode(corpus[0][:20])


def test_training_is_deterministic(corpus: tuple[list[str], list[str]]) -> None:
    cfg = TokenizerConfig(vocab_size=60)
    assert Tokenizer.train(corpus[0], cfg).model_proto == Tokenizer.train(corpus[0], cfg).model_proto


def test_a_joint_tokenizer_is_one_model_for_both_sides(tokenizers: Tokenizers, corpus: tuple[list[str], list[str]]) -> None:
    src, tgt = corpus
    assert tokenizers.joint
    assert tokenizers.src is tokenizers.tgt
    # it knows the letters of both sides: lower-case source, upper-case target
    ids = tokenizers.src.encode(src[:20] + tgt[:20])
    assert all(UNK_ID not in seq for seq in ids)


def test_separate_tokenizers_each_know_only_their_own_side(corpus: tuple[list[str], list[str]]) -> None:
    src, tgt = corpus
    separate = train_tokenizers(src, tgt, TokenizerConfig(vocab_size=60, joint=False))

    assert not separate.joint
    assert separate.src.decode(separate.src.encode(src[:20])) == src[:20]
    assert separate.tgt.decode(separate.tgt.encode(tgt[:20])) == tgt[:20]
    # the source side is lower case and the target side upper case: neither model has the other's letters
    assert all(UNK_ID in seq for seq in separate.src.encode(tgt[:20]))
    assert all(UNK_ID in seq for seq in separate.tgt.encode(src[:20]))


@pytest.mark.parametrize("model_type", ["bpe", "char", "word"])
def test_every_model_type_trains_and_round_trips(model_type: str, corpus: tuple[list[str], list[str]]) -> None:
    tokenizer = Tokenizer.train(corpus[0], TokenizerConfig(vocab_size=60, model_type=model_type))
    assert tokenizer.pieces([0, 1, 2, 3]) == SPECIAL_PIECES
    assert tokenizer.decode(tokenizer.encode(corpus[0][:20])) == corpus[0][:20]


@pytest.mark.parametrize("lines", [[], ["", ""]])
def test_training_on_no_text_is_a_data_error(lines: list[str]) -> None:
    with pytest.raises(DataError, match="SentencePiece could not be trained"):
        Tokenizer.train(lines, TokenizerConfig(vocab_size=60))


def test_the_vocabulary_size_is_a_soft_limit_for_small_corpora() -> None:
    tokenizer = Tokenizer.train(["a b", "b a"], TokenizerConfig(vocab_size=60))
    assert 4 < tokenizer.vocab_size < 60
    assert tokenizer.decode(tokenizer.encode(["b a a"])) == ["b a a"]
