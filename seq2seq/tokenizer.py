"""SentencePiece, wrapped: its ids are the vocabulary, and its model travels as bytes inside checkpoints."""

from __future__ import annotations

import hashlib
import io
import json
import re
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import sentencepiece as spm

from seq2seq.config import TokenizerConfig
from seq2seq.errors import DataError
from seq2seq.textio import atomic_write

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPM_SEED = 1
HASHED_LINES = 100_000  # lines joined per update of the cache key's hash: bounded memory on any corpus
BYTE_FALLBACK_TYPES = ("unigram", "bpe")
BYTE_FALLBACK_MIN_VOCAB = 1024  # its 256 byte pieces then take at most a quarter of the vocabulary


class Span(NamedTuple):
    """One piece of an encoded text and the text it came from, as written (not as SentencePiece normalized it)."""

    piece: str  # the piece, or the characters themselves for <unk>
    text: str   # its original characters, with the spaces before it


class Tokenizer:
    """One SentencePiece model. Ids: pad 0, unk 1, bos 2, eos 3, then the pieces."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, lines: Sequence[str], cfg: TokenizerConfig, cache: TokenizerCache | None = None) -> Tokenizer:
        """Train a model on `lines` in memory (no files), or take it from `cache` when it was trained there
        before. vocab_size is a soft limit for small corpora."""
        options = _trainer_options(cfg)
        if cache is None:
            return cls(_sentencepiece_model(lines, options))
        entry = cache.entry(lines, options)
        if kept := cache.load(entry):
            return kept
        tokenizer = cls(_sentencepiece_model(lines, options))
        cache.store(entry, tokenizer)
        return tokenizer

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def byte_fallback(self) -> bool:
        """Whether characters outside the vocabulary are spelled as byte pieces (instead of becoming <unk>)."""
        return self._sp.is_byte(self._sp.piece_to_id("<0x00>"))

    @property
    def processor(self) -> spm.SentencePieceProcessor:
        """The SentencePiece model itself, for what this wrapper does not do (sampling pieces: `seq2seq.subwords`)."""
        return self._sp

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return self._sp.decode([list(seq) for seq in ids])

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return [self._sp.id_to_piece(i) for i in ids]

    def spans(self, text: str) -> list[Span]:
        """The pieces `encode` cuts `text` into, each with its original characters: what a <unk> piece stood for."""
        return [Span(piece, surface) for piece, surface in _pieces(self._sp.encode(text, out_type="serialized_proto"))]

    def surfaces(self, ids: Sequence[int]) -> list[str]:
        """The text each id decodes to; joined, they are the decoded text (a <unk> gives " \u2047 ")."""
        return [surface for _, surface in _pieces(self._sp.decode(list(ids), out_type="serialized_proto"))]


def _pieces(serialized: bytes) -> list[tuple[str, str]]:
    """(piece, surface) of each piece of a serialized SentencePieceText. Read from the protobuf wire format here,
    which every sentencepiece 0.2 writes, rather than through the protobuf package, which is not a dependency."""
    pieces = []
    for number, piece in _fields(serialized):
        if number == 2:  # SentencePieceText.pieces: piece 1, id 2, surface 3, begin 4, end 5
            strings = {field: value for field, value in _fields(piece) if field in (1, 3)}
            pieces.append((strings.get(1, b"").decode(), strings.get(3, b"").decode()))
    return pieces


def _fields(message: bytes) -> Iterator[tuple[int, bytes]]:
    """(field number, value) of each field of a protobuf message, every value as its bytes (a varint's own)."""
    at = 0
    while at < len(message):
        key, at = _varint(message, at)
        wire_type, start = key & 7, at
        if wire_type == 0:
            _, at = _varint(message, at)
        elif wire_type == 2:
            size, start = _varint(message, at)
            at = start + size
        else:  # fixed width: 1 is 8 bytes, 5 is 4 (SentencePieceText's score)
            at += 8 if wire_type == 1 else 4
        yield key >> 3, message[start:at]


def _varint(message: bytes, at: int) -> tuple[int, int]:
    """The base-128 integer starting at `at`, and where the next field starts."""
    value = shift = 0
    while True:
        byte = message[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if byte < 0x80:
            return value, at


class Tokenizers(NamedTuple):
    """The source and target tokenizers; one and the same object when the vocabulary is joint."""

    src: Tokenizer
    tgt: Tokenizer

    @property
    def joint(self) -> bool:
        return self.src is self.tgt


MAX_SENTENCE_BYTES = 4192  # SentencePiece's max_sentence_length: it skips longer training lines


def train_tokenizers(
    src_lines: Sequence[str], tgt_lines: Sequence[str], cfg: TokenizerConfig, cache: TokenizerCache | None = None
) -> Tokenizers:
    if cfg.joint:
        shared = Tokenizer.train([*src_lines, *tgt_lines], cfg, cache)
        return Tokenizers(shared, shared)
    target_cfg = replace(cfg, model_type=cfg.target_model_type or cfg.model_type)
    return Tokenizers(Tokenizer.train(src_lines, cfg, cache), Tokenizer.train(tgt_lines, target_cfg, cache))


def _sentencepiece_model(lines: Sequence[str], options: dict[str, object]) -> bytes:
    """A trained SentencePiece model. Text it cannot learn from is a DataError saying why, before SentencePiece
    would stop with an internal check ("INTERNAL: ... [!sentences_.empty()]")."""
    if not any(line.strip() and len(line.encode("utf-8", "surrogatepass")) <= MAX_SENTENCE_BYTES for line in lines):
        if not lines:
            raise DataError("no line to learn the tokenizer from: the text is empty")
        empty = sum(not line.strip() for line in lines)
        reasons = [f"{empty:,} empty"] if empty else []
        if len(lines) > empty:
            reasons.append(f"{len(lines) - empty:,} over {MAX_SENTENCE_BYTES:,} bytes, longer than SentencePiece learns from")
        raise DataError(f"no line to learn the tokenizer from: of {len(lines):,} lines, {' and '.join(reasons)} "
                        "(one sentence a line is expected)")
    model = io.BytesIO()
    spm.set_random_generator_seed(SPM_SEED)  # its sampling of large corpora is then repeatable
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, **options)
    except RuntimeError as error:
        raise DataError(_trainer_failure(str(error), byte_fallback="byte_fallback" in options)) from None
    return model.getvalue()


def _trainer_failure(message: str, *, byte_fallback: bool) -> str:
    """SentencePiece's error in the user's terms: without its "INTERNAL: file.cc(line) [check]" prefix, and naming
    this package's settings where it names its own."""
    too_small = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_small:
        size, needed = too_small.groups()
        what, remedy = "its characters and the special pieces", "raise --vocab-size, or lower tokenizer.character_coverage"
        if byte_fallback:
            what = "its characters, the special pieces and the 256 byte pieces of tokenizer.byte_fallback"
            remedy = "raise --vocab-size, lower tokenizer.character_coverage, or set tokenizer.byte_fallback=false"
        return f"tokenizer.vocab_size {size} is smaller than the {needed} pieces this text needs at least ({what}): {remedy}"
    return "SentencePiece could not be trained: " + re.sub(r"^INTERNAL: \S+\(\d+\) \[.*?\] ", "", message.strip())


def uses_byte_fallback(cfg: TokenizerConfig) -> bool:
    """Whether a tokenizer trained with `cfg` spells characters it never saw as UTF-8 byte pieces instead of <unk>.

    tokenizer.byte_fallback asks for it; unigram and bpe models get it from BYTE_FALLBACK_MIN_VOCAB pieces on, since
    below that the 256 byte pieces would crowd out the text's own. Char and word models never do: a char model's
    pieces are the text's characters, all of them in the vocabulary at character_coverage 1, so the byte pieces would
    be 256 more output classes that training never shows the model; a word model's byte pieces do not even decode
    back to the text (SentencePiece spells the word's leading space as bytes too).
    """
    return cfg.byte_fallback and cfg.model_type in BYTE_FALLBACK_TYPES and cfg.vocab_size >= BYTE_FALLBACK_MIN_VOCAB


def _trainer_options(cfg: TokenizerConfig) -> dict[str, object]:
    return {
        "vocab_size": cfg.vocab_size,
        "model_type": cfg.model_type,
        "character_coverage": cfg.character_coverage,
        "hard_vocab_limit": False,
        "pad_id": PAD_ID, "unk_id": UNK_ID, "bos_id": BOS_ID, "eos_id": EOS_ID,
        "input_sentence_size": 2_000_000,
        "shuffle_input_sentence": True,
        # Fixed, not the machine's cores: the model depends on the thread count (1, 2, 4 and 8 threads
        # gave 4 different Multi30k models), and a corpus should give one tokenizer everywhere.
        "num_threads": 2,
        "minloglevel": 2,
        # only when on: the models (and cache entries) of every other setting stay those made before it existed
        **({"byte_fallback": True} if uses_byte_fallback(cfg) else {}),
    }


class TokenizerCache:
    """A folder of trained SentencePiece models, each filed under a hash of all that decides it: the lines,
    the trainer's options, the seed and SentencePiece's version.

    Training is repeatable (fixed seed and threads), so a model found here is the one training would make
    again; on a corpus of 1M pairs that spares about a minute of every run after the first. The cache is
    only a shortcut: a file that cannot be read or parsed is trained again, and one that cannot be stored
    is left out, without failing the run.
    """

    def __init__(self, folder: str | Path, *, writable: bool = True) -> None:
        self.folder = Path(folder)
        self.writable = writable  # False: look up, never store (a dry run writes nothing)
        self.used: list[Path] = []  # the files this cache supplied, for the report

    def entry(self, lines: Sequence[str], options: dict[str, object]) -> Path:
        """Where the model for these lines and options is kept; the lines are hashed with their lengths,
        so no way of cutting the same text into lines shares a key with another."""
        recipe = {"sentencepiece": spm.__version__, "seed": SPM_SEED, **options}
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
        digest.update(array("q", map(len, lines)).tobytes())
        for start in range(0, len(lines), HASHED_LINES):
            digest.update("".join(lines[start:start + HASHED_LINES]).encode("utf-8", "surrogatepass"))
        return self.folder / f"{digest.hexdigest()}.model"

    def load(self, entry: Path) -> Tokenizer | None:
        try:
            tokenizer = Tokenizer(entry.read_bytes())
        except (OSError, RuntimeError):  # absent, unreadable, or not a SentencePiece model
            return None
        self.used.append(entry)
        return tokenizer

    def store(self, entry: Path, tokenizer: Tokenizer) -> None:
        if not self.writable:
            return
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(entry, binary=True) as file:
                file.write(tokenizer.model_proto)
        except (OSError, DataError):
            pass  # the next run on these lines trains the model again
