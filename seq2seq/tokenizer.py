"""SentencePiece, wrapped: its ids are the vocabulary, and its model travels as bytes inside checkpoints."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import NamedTuple

import sentencepiece as spm

from seq2seq.config import TokenizerConfig
from seq2seq.errors import DataError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPM_SEED = 1


class Tokenizer:
    """One SentencePiece model. Ids: pad 0, unk 1, bos 2, eos 3, then the pieces."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, lines: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
        """Train a model on `lines` in memory (no files): vocab_size is a soft limit for small corpora."""
        model = io.BytesIO()
        spm.set_random_generator_seed(SPM_SEED)  # its sampling of large corpora is then repeatable
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_writer=model,
                vocab_size=cfg.vocab_size,
                model_type=cfg.model_type,
                character_coverage=cfg.character_coverage,
                hard_vocab_limit=False,
                pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                input_sentence_size=2_000_000,
                shuffle_input_sentence=True,
                # Fixed, not the machine's cores: the model depends on the thread count (1, 2, 4 and 8 threads
                # gave 4 different Multi30k models), and a corpus should give one tokenizer everywhere.
                num_threads=2,
                minloglevel=2,
            )
        except RuntimeError as error:
            raise DataError(f"SentencePiece could not be trained: {error}") from None
        return cls(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return self._sp.decode([list(seq) for seq in ids])

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return [self._sp.id_to_piece(i) for i in ids]


class Tokenizers(NamedTuple):
    """The source and target tokenizers; one and the same object when the vocabulary is joint."""

    src: Tokenizer
    tgt: Tokenizer

    @property
    def joint(self) -> bool:
        return self.src is self.tgt


def train_tokenizers(src_lines: Sequence[str], tgt_lines: Sequence[str], cfg: TokenizerConfig) -> Tokenizers:
    if cfg.joint:
        shared = Tokenizer.train([*src_lines, *tgt_lines], cfg)
        return Tokenizers(shared, shared)
    target_cfg = replace(cfg, model_type=cfg.target_model_type or cfg.model_type)
    return Tokenizers(Tokenizer.train(src_lines, cfg), Tokenizer.train(tgt_lines, target_cfg))
