"""The SentencePiece wrapper: reversible on ordinary text, fixed special ids, joint or per-side models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import sentencepiece as spm

from seq2seq.config import TokenizerConfig, from_dict
from seq2seq.errors import ConfigError, DataError
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, TokenizerCache, Tokenizers, train_tokenizers

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


UNSEEN = "naïve 東京 🙂"  # characters the synthetic corpus never has


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_unseen_characters_round_trip_with_byte_fallback(model_type: str, corpus: tuple[list[str], list[str]]) -> None:
    tokenizer = Tokenizer.train(corpus[0], TokenizerConfig(vocab_size=1024, model_type=model_type))
    texts = [UNSEEN, f"the cat sat in {UNSEEN}!", "Ünïcödé ÅÄÖ → ∞ ⚡ Ωμέγα"]  # NFKC leaves them as they are
    encoded = tokenizer.encode(texts)
    assert all(UNK_ID not in ids for ids in encoded)
    assert tokenizer.decode(encoded) == texts
    assert "<0xE6>" in tokenizer.pieces(encoded[0])  # 東 is E6 9D B1 in UTF-8


def _has_byte_pieces(tokenizer: Tokenizer) -> bool:
    return "<0x00>" in tokenizer.pieces(range(tokenizer.vocab_size))


@pytest.mark.parametrize("cfg", [
    TokenizerConfig(vocab_size=8000, byte_fallback=False),
    TokenizerConfig(vocab_size=1023),                    # 256 byte pieces would crowd a small vocabulary
    TokenizerConfig(vocab_size=100, model_type="bpe"),
    TokenizerConfig(vocab_size=8000, model_type="char"),  # whole characters or words: no bytes
    TokenizerConfig(vocab_size=8000, model_type="word"),
], ids=["off", "unigram-1023", "bpe-100", "char", "word"])
def test_byte_fallback_is_left_out_where_it_does_not_fit_and_unseen_characters_are_unk(
    cfg: TokenizerConfig, corpus: tuple[list[str], list[str]],
) -> None:
    tokenizer = Tokenizer.train(corpus[0], cfg)
    assert not _has_byte_pieces(tokenizer) and not tokenizer.byte_fallback
    assert UNK_ID in tokenizer.encode([UNSEEN])[0]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_byte_pieces_fit_under_the_soft_vocabulary_limit(model_type: str, corpus: tuple[list[str], list[str]]) -> None:
    tokenizer = Tokenizer.train(corpus[0], TokenizerConfig(vocab_size=8000, model_type=model_type))
    assert _has_byte_pieces(tokenizer) and tokenizer.byte_fallback and 4 + 256 < tokenizer.vocab_size < 8000
    assert tokenizer.decode(tokenizer.encode(corpus[0][:20])) == corpus[0][:20]


def test_a_vocabulary_too_small_for_the_byte_pieces_says_so_and_how_to_do_without() -> None:
    lines = ["".join(chr(0x4E00 + (line * 10 + i) % 800) for i in range(10)) for line in range(200)]  # 800 characters
    with pytest.raises(DataError) as caught:
        Tokenizer.train(lines, TokenizerConfig(vocab_size=1024))
    assert str(caught.value) == (
        "tokenizer.vocab_size 1024 is smaller than the 1061 pieces this text needs at least (its characters, the special "
        "pieces and the 256 byte pieces of tokenizer.byte_fallback): raise --vocab-size, lower "
        "tokenizer.character_coverage, or set tokenizer.byte_fallback=false")
    assert not _has_byte_pieces(Tokenizer.train(lines, TokenizerConfig(vocab_size=1024, byte_fallback=False)))


def test_byte_fallback_is_a_boolean_setting_and_older_configs_load_without_it() -> None:
    assert from_dict({"tokenizer": {"vocab_size": 100}}).tokenizer.byte_fallback  # older configs: the default
    with pytest.raises(ConfigError, match=r"^setting 'tokenizer.byte_fallback' must be bool, got 'yes'$"):
        from_dict({"tokenizer": {"byte_fallback": "yes"}})


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
    with pytest.raises(DataError, match="no line to learn the tokenizer from: (the text is empty|of 2 lines, 2 empty)"):
        Tokenizer.train(lines, TokenizerConfig(vocab_size=60))


def test_the_vocabulary_size_is_a_soft_limit_for_small_corpora() -> None:
    tokenizer = Tokenizer.train(["a b", "b a"], TokenizerConfig(vocab_size=60))
    assert 4 < tokenizer.vocab_size < 60
    assert tokenizer.decode(tokenizer.encode(["b a a"])) == ["b a a"]


def _refuse_to_train(**options: object) -> None:
    raise AssertionError("SentencePiece was asked to train a model the cache holds")


def test_a_cached_model_is_the_one_training_makes_and_is_not_trained_again(
    corpus: tuple[list[str], list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = TokenizerConfig(vocab_size=60)
    first = TokenizerCache(tmp_path)
    trained = Tokenizer.train(corpus[0], cfg, first)
    [entry] = tmp_path.glob("*.model")
    assert first.used == []
    assert trained.model_proto == Tokenizer.train(corpus[0], cfg).model_proto == entry.read_bytes()

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", _refuse_to_train)
    second = TokenizerCache(tmp_path)
    assert Tokenizer.train(corpus[0], cfg, second).model_proto == trained.model_proto
    assert second.used == [entry]


def test_separate_tokenizers_are_kept_one_file_per_side(corpus: tuple[list[str], list[str]], tmp_path: Path) -> None:
    cfg = TokenizerConfig(vocab_size=60, joint=False)
    train_tokenizers(*corpus, cfg, TokenizerCache(tmp_path))
    again = TokenizerCache(tmp_path)
    train_tokenizers(*corpus, cfg, again)
    assert len(set(again.used)) == 2 and set(again.used) == set(tmp_path.glob("*.model"))


def test_everything_that_decides_a_model_decides_its_entry(
    corpus: tuple[list[str], list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines, cfg = corpus[0][:100], TokenizerConfig(vocab_size=60)
    cut_elsewhere = [lines[0][:-1], lines[0][-1] + lines[1], *lines[2:]]  # the same text in as many lines
    variants = [(lines, cfg), (cut_elsewhere, cfg), ([*lines, lines[0]], cfg), (lines, replace(cfg, vocab_size=50)),
                (lines, replace(cfg, model_type="bpe")), (lines, replace(cfg, character_coverage=0.99)),
                (lines, replace(cfg, vocab_size=1024)), (lines, replace(cfg, vocab_size=1024, byte_fallback=False))]
    cache = TokenizerCache(tmp_path)
    for variant_lines, variant_cfg in variants:
        Tokenizer.train(variant_lines, variant_cfg, cache)
    assert len(list(tmp_path.glob("*.model"))) == len(variants)
    monkeypatch.setattr(spm, "__version__", "0.0.1")
    Tokenizer.train(lines, cfg, cache)
    assert len(list(tmp_path.glob("*.model"))) == len(variants) + 1
    assert cache.used == []


def test_a_damaged_cache_file_is_trained_again_and_replaced(corpus: tuple[list[str], list[str]], tmp_path: Path) -> None:
    cfg = TokenizerConfig(vocab_size=60)
    good = Tokenizer.train(corpus[0], cfg, TokenizerCache(tmp_path))
    [entry] = tmp_path.glob("*.model")
    entry.write_bytes(b"not a model")
    cache = TokenizerCache(tmp_path)
    assert Tokenizer.train(corpus[0], cfg, cache).model_proto == good.model_proto
    assert cache.used == [] and entry.read_bytes() == good.model_proto


def test_a_read_only_cache_is_consulted_but_never_written(corpus: tuple[list[str], list[str]], tmp_path: Path) -> None:
    cfg = TokenizerConfig(vocab_size=60)
    Tokenizer.train(corpus[0], cfg, TokenizerCache(tmp_path, writable=False))
    assert list(tmp_path.iterdir()) == []
    Tokenizer.train(corpus[0], cfg, TokenizerCache(tmp_path))
    reader = TokenizerCache(tmp_path, writable=False)
    Tokenizer.train(corpus[0], cfg, reader)
    assert reader.used == list(tmp_path.glob("*.model"))


def test_a_cache_that_cannot_be_written_does_not_stop_training(corpus: tuple[list[str], list[str]], tmp_path: Path) -> None:
    blocked = tmp_path / "a file"
    blocked.write_text("in the way")
    tokenizer = Tokenizer.train(corpus[0], TokenizerConfig(vocab_size=60), TokenizerCache(blocked / "tokenizers"))
    assert tokenizer.decode(tokenizer.encode(corpus[0][:5])) == corpus[0][:5]


@pytest.mark.parametrize(("lines", "message"), [
    (["", "  ", ""], r"no line to learn the tokenizer from: of 6 lines, 6 empty \(one sentence a line"),
    (["x" * 5000], r"no line to learn the tokenizer from: of 2 lines, 2 over 4,192 bytes"),
    (["a b", "c d"], r"tokenizer.vocab_size 8 is smaller than the 9 pieces this text needs at least"),
])
def test_text_sentencepiece_cannot_learn_from_is_a_data_error_in_the_users_terms(lines: list[str], message: str) -> None:
    with pytest.raises(DataError, match=message) as caught:
        train_tokenizers(lines, lines, TokenizerConfig(vocab_size=8))
    assert "INTERNAL" not in str(caught.value)
