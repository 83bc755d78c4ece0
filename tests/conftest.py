"""Shared fixtures: a synthetic corpus, a tokenizer trained on it once per session, tiny models.

Everything is generated here from fixed seeds, so the suite needs no data files and runs in seconds.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from seq2seq import checkpoint
from seq2seq.config import Config, DataConfig, ModelConfig, SearchConfig, TokenizerConfig
from seq2seq.model import Seq2Seq
from seq2seq.tokenizer import Tokenizers, train_tokenizers

# The suite checks CPU behaviour, bit for bit where it can, as CI (no GPU) runs it. On a GPU machine,
# `auto` would move training onto the GPU, and the two-process tests would pick nccl and fork after
# CUDA work. Hidden before torch first looks (and inherited by the subprocesses the tests start).
# The GPU check is bench/gpu.sh.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

# The tensors here are tiny: one thread is fastest, and spinning OpenMP workers on a busy 2-core
# machine can make a 2 ms forward pass take a second.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def suite_tokenizer_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`seq2seq train` in the suite keeps its tokenizers in a folder of its own, never the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEQ2SEQ_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


SOURCE_WORDS = (
    "the cat sat on a mat while the dog ran far away past big small red blue green houses "
    "and tall trees by the river under stone bridges in light rain"
).split()


def mapped(word: str) -> str:
    """The synthetic task's 'translation' of a word: reversed and upper-cased (cat -> TAC)."""
    return word[::-1].upper()


def synthetic_pairs(count: int, *, seed: int, max_words: int = 6) -> tuple[list[str], list[str]]:
    """`count` source sentences of random words and their word-by-word mapped targets."""
    rng = random.Random(seed)
    src = [" ".join(rng.choice(SOURCE_WORDS) for _ in range(rng.randint(1, max_words))) for _ in range(count)]
    return src, [" ".join(mapped(word) for word in line.split()) for line in src]


@pytest.fixture(scope="session")
def make_pairs() -> Callable[..., tuple[list[str], list[str]]]:
    return synthetic_pairs


@pytest.fixture(scope="session")
def make_data_config() -> Callable[..., DataConfig]:
    """Write a small train/valid corpus of the word-mapping task into a folder; its DataConfig points at it."""

    def build(folder: Path, *, train: int, valid: int, seed: int, valid_words: int = 4, max_length: int = 100) -> DataConfig:
        paths = {}
        for name, (count, pair_seed, words) in {"train": (train, seed, 4), "valid": (valid, seed + 1, valid_words)}.items():
            sources, targets = synthetic_pairs(count, seed=pair_seed, max_words=words)
            for side, lines in (("src", sources), ("tgt", targets)):
                path = folder / f"{name}.{side}"
                path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
                paths[f"{name}.{side}"] = str(path)
        return DataConfig(source=paths["train.src"], target=paths["train.tgt"], valid_source=paths["valid.src"],
                          valid_target=paths["valid.tgt"], max_length=max_length)

    return build


@pytest.fixture(scope="session")
def corpus() -> tuple[list[str], list[str]]:
    return synthetic_pairs(300, seed=0)


@pytest.fixture(scope="session")
def tokenizers(corpus: tuple[list[str], list[str]]) -> Tokenizers:
    """One joint unigram model over both sides of the synthetic corpus (tens of pieces)."""
    src, tgt = corpus
    return train_tokenizers(src, tgt, TokenizerConfig(vocab_size=80))


ModelFactory = Callable[..., Seq2Seq]


@pytest.fixture
def make_model() -> ModelFactory:
    """Build a tiny Seq2Seq in eval mode with seeded weights.

    `scale` widens the uniform init so that the output distributions are far from flat: searches
    on such a model have clear winners instead of near-ties decided by rounding.
    """

    def build(
        *, src_vocab: int = 20, tgt_vocab: int = 20, attention: str = "bahdanau", layers: int = 1,
        input_feeding: bool = True, emb_dim: int = 16, hidden_dim: int = 32, seed: int = 0, scale: float = 0.1,
        cell: str = "lstm", **options: object,
    ) -> Seq2Seq:
        torch.manual_seed(seed)
        cfg = ModelConfig(cell=cell, emb_dim=emb_dim, hidden_dim=hidden_dim, layers=layers, attention=attention,
                          input_feeding=input_feeding, embedding_dropout=0.2, layer_dropout=0.2, output_dropout=0.2,
                          **options)
        model = Seq2Seq(src_vocab, tgt_vocab, cfg)
        if scale != 0.1:
            with torch.no_grad():
                for param in model.parameters():
                    param.uniform_(-scale, scale)
        return model.eval()

    return build


def save_untrained_model(path: Path, tokenizers: Tokenizers, search: SearchConfig, *, step: int = 1) -> Path:
    """A tiny untrained model file (8-wide embeddings, 16 hidden units) with these search settings: for tests
    where what a model says does not matter, only what the program does around it."""
    config = Config(model=ModelConfig(emb_dim=8, hidden_dim=16), search=search)
    torch.manual_seed(0)
    checkpoint.save(path, config=config, tokenizers=tokenizers, model=checkpoint.build_model(config, tokenizers), step=step)
    return path
