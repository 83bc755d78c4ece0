"""Subword regularisation (tokenizer.sampling_alpha): sampled segmentations spell the same text, come from our own
seeded generator (the same in every process, epoch by epoch), follow SentencePiece's own pieces where nothing is
dropped, and never reach validation. Runs that sample resume exactly (tests/test_resume.py's check)."""

from __future__ import annotations

import dataclasses
import gzip
import random
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from seq2seq import checkpoint, startup, training
from seq2seq.config import Config, ModelConfig, SearchConfig, TokenizerConfig, TrainConfig
from seq2seq.distributed import ALONE
from seq2seq.errors import ConfigError
from seq2seq.subwords import NBEST, BestOf, MergeDropout, SampledPairs
from seq2seq.tokenizer import UNK_ID, Tokenizer, Tokenizers

MULTI30K = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"
ODD_TEXTS = ["naïve 東京 🙂 cat", "  the   dog  ", "€€ sat €", "Ünïcödé ÅÄÖ → ∞", "x"]  # unseen characters, spaces


def generators(count: int, seed: int = 0) -> list[random.Random]:
    return [random.Random(f"{seed}:{index}") for index in range(count)]


@pytest.fixture(scope="module")
def texts(corpus) -> list[str]:
    return corpus[0][:150] + corpus[1][:150] + ODD_TEXTS


@pytest.mark.parametrize(("vocab_size", "byte_fallback"), [(60, False), (1024, True)], ids=["unk", "byte-fallback"])
def test_bpe_without_dropout_gives_sentencepieces_own_pieces(corpus, texts: list[str], vocab_size: int,
                                                              byte_fallback: bool) -> None:
    """The merges are replayed as SentencePiece makes them (order, ties, unknown characters, byte fallback): with
    alpha 0, the same ids for every text; so with alpha > 0 only the skipped merges differ."""
    tokenizer = Tokenizer.train(corpus[0] + corpus[1], TokenizerConfig(vocab_size=vocab_size, model_type="bpe",
                                                                        byte_fallback=byte_fallback))
    assert ("<0x00>" in tokenizer.pieces(range(tokenizer.vocab_size))) == byte_fallback

    replayed = MergeDropout(tokenizer.processor, 0.0).sample(texts, generators(len(texts)))

    assert replayed == tokenizer.encode(texts)
    assert any(UNK_ID in ids for ids in replayed) != byte_fallback


@pytest.mark.skipif(not MULTI30K.is_dir(), reason="needs ../shared/data/multi30k")
def test_bpe_without_dropout_gives_sentencepieces_own_pieces_on_multi30k() -> None:
    lines = [line.decode().rstrip("\n") for path in ("train.de.gz", "train.en.gz") for line in gzip.open(MULTI30K / path)]
    tokenizer = Tokenizer.train(lines, TokenizerConfig(vocab_size=4000, model_type="bpe", character_coverage=0.98))
    sample = lines[::97] + ODD_TEXTS

    assert MergeDropout(tokenizer.processor, 0.0).sample(sample, generators(len(sample))) == tokenizer.encode(sample)


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sampled_pieces_spell_the_same_text_in_other_ways(corpus, texts: list[str], model_type: str) -> None:
    tokenizer = Tokenizer.train(corpus[0] + corpus[1], TokenizerConfig(vocab_size=80, model_type=model_type))
    draw = (BestOf if model_type == "unigram" else MergeDropout)(tokenizer.processor, 0.1)
    ordinary = tokenizer.encode(texts)

    sampled = draw.sample(texts, generators(len(texts)))

    plain = [index for index, text in enumerate(texts) if "€" not in text]  # <unk> decodes to " ⁇ "
    assert [tokenizer.decode([sampled[i]]) for i in plain] == [tokenizer.decode([ordinary[i]]) for i in plain]
    changed = sum(one != two for one, two in zip(sampled, ordinary))
    assert changed > len(texts) / 4, f"only {changed} of {len(texts)} texts were cut otherwise"
    assert sum(map(len, sampled)) > sum(map(len, ordinary)), "the best segmentation has the fewest pieces, mostly"


def test_unigram_draws_from_its_best_segmentations_the_first_being_the_tokenizers(tokenizers: Tokenizers, texts) -> None:
    candidates = tokenizers.src.processor.nbest_encode(texts, nbest_size=NBEST, out_type=int)
    assert [found[0] for found in candidates] == tokenizers.src.encode(texts)
    drawn = BestOf(tokenizers.src.processor, 0.5).sample(texts, generators(len(texts)))
    assert all(ids in found for ids, found in zip(drawn, candidates))


@pytest.fixture(scope="module")
def sampled(tokenizers: Tokenizers, texts) -> SampledPairs:
    return SampledPairs(tokenizers, TokenizerConfig(vocab_size=80, sampling_alpha=0.1), 7, texts, texts[::-1])


def test_a_pairs_pieces_depend_on_seed_epoch_and_pair_alone(tokenizers: Tokenizers, texts, sampled: SampledPairs) -> None:
    indices = list(range(0, len(texts), 3))
    once = sampled.pairs(indices, epoch=2)

    assert sampled.pairs(indices, epoch=2) == once
    assert sampled.pairs(indices[::-1], epoch=2) == once[::-1], "not the batch, nor the place in it"
    assert sampled.pairs(indices, epoch=3) != once, "a new cut every epoch"
    other_seed = SampledPairs(tokenizers, TokenizerConfig(vocab_size=80, sampling_alpha=0.1), 8, texts, texts[::-1])
    assert other_seed.pairs(indices, epoch=2) != once


CHILD = """
import sys, pickle
sys.path.insert(0, {tests!r})
from conftest import synthetic_pairs
from seq2seq.config import TokenizerConfig
from seq2seq.subwords import SampledPairs
from seq2seq.tokenizer import Tokenizer, Tokenizers
tokenizer = Tokenizer(open({model!r}, "rb").read())
texts = {texts!r}
pairs = SampledPairs(Tokenizers(tokenizer, tokenizer), TokenizerConfig(vocab_size=80, sampling_alpha=0.1), 7, texts, texts[::-1])
sys.stdout.buffer.write(pickle.dumps([tuple(map(list, pair)) for pair in pairs.pairs(range(len(texts)), epoch=2)]))
"""


def test_the_same_pieces_in_another_process(tokenizers: Tokenizers, texts, sampled: SampledPairs, tmp_path: Path) -> None:
    """What a resumed run needs, and SentencePiece's own sampling lacks: the same seed gives the same pieces anywhere."""
    import pickle

    (tmp_path / "model").write_bytes(tokenizers.src.model_proto)
    code = CHILD.format(tests=str(Path(__file__).parent), model=str(tmp_path / "model"), texts=texts)
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=60)

    assert pickle.loads(child.stdout) == [tuple(map(list, pair)) for pair in sampled.pairs(range(len(texts)), epoch=2)]


# --- in training --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, make_data_config) -> Config:
    data = make_data_config(tmp_path_factory.mktemp("data"), train=80, valid=40, seed=80, valid_words=3)
    return Config(
        data=data, tokenizer=TokenizerConfig(vocab_size=80, sampling_alpha=0.1), model=ModelConfig(emb_dim=8, hidden_dim=16),
        train=TrainConfig(lr=0.01, batch_tokens=200, max_steps=6, valid_every=3, log_every=1, threads=1),
        search=SearchConfig(batch_size=6, max_length_constant=3),
    ).validate()


def without_sampling(config: Config) -> Config:
    return dataclasses.replace(config, tokenizer=dataclasses.replace(config.tokenizer, sampling_alpha=0.0))


def test_training_samples_and_validation_does_not(config: Config) -> None:
    plain, sampling = (startup.start_run(cfg, None, ALONE) for cfg in (without_sampling(config), config))

    assert plain.sampled is None and sampling.sampled is not None
    assert list(sampling.valid_examples) == list(plain.valid_examples)
    indices = list(range(len(sampling.examples)))
    assert list(sampling.examples) == list(plain.examples), "batches are planned on the ordinary pieces"
    assert sampling.sampled.pairs(indices, epoch=1) != list(plain.examples)


def test_a_sampling_run_stopped_and_resumed_equals_the_uninterrupted_one(config: Config, tmp_path: Path) -> None:
    straight, run = tmp_path / "straight", tmp_path / "run"
    training.train(config, straight)
    calls = iter(range(1, 100))
    stopped = training.train(config, run, should_stop=lambda: "interrupted" if next(calls) >= 4 else None)
    assert stopped.step == 4

    training.train(config, run, resume=True)

    one, two = checkpoint.load(run / "last.pt"), checkpoint.load(straight / "last.pt")
    assert one.step == two.step == 6 and one.config.tokenizer.sampling_alpha == 0.1
    assert all(value.equal(two.model.state_dict()[name]) for name, value in one.model.state_dict().items())
    plain = tmp_path / "plain"
    training.train(without_sampling(config), plain)
    assert not checkpoint.load(plain / "last.pt").model.out.bias.equal(two.model.out.bias), "sampling changed training"


def test_char_and_word_tokenizers_refuse_sampling_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^tokenizer.sampling_alpha .*unigram .*bpe"):
        Config(tokenizer=TokenizerConfig(model_type="char", sampling_alpha=0.1)).validate()
    with pytest.raises(ConfigError, match="^tokenizer.sampling_alpha "):
        Config(tokenizer=TokenizerConfig(joint=False, target_model_type="word", sampling_alpha=0.1)).validate()

    result = CliRunner().invoke(app, ["train", "--tokenizer-type", "word", "--set", "tokenizer.sampling_alpha=0.1",
                                      "--print-config"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "tokenizer.sampling_alpha" in result.stderr
