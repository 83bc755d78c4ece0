"""`--replace-unk`: each <unk> of a translation becomes the source text it attended to most.

A tokenizer without byte fallback (a model trained before it, a char or word model, a small vocabulary)
turns characters it never saw into <unk>, which decodes to " ⁇ ". What such a piece most often stands for
in the output is in the source as it is: a name, a number, a rare letter. The attention says where: each
output <unk> takes the original characters of the source piece it attended to most, recomputed after the
search as for `--alignment` (one more pass of the decoder over each output).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from seq2seq.errors import ConfigError
from seq2seq.tokenizer import UNK_ID, Span, Tokenizers
from seq2seq.translation import Model, Translation

WORD_START = "\u2581"  # "▁": SentencePiece's mark of a piece that begins a word


class UnknownCopier:
    """Copies source text into the <unk> pieces of translations: it keeps each source line as the pipeline reads
    it (`reading`) and mends the translations as they come out, in input order (`mended`)."""

    def __init__(self, model: Model, tokenizers: Tokenizers) -> None:
        if model.attention is None:  # checked now, not when the first line is read
            raise ConfigError("this model has no attention (model.attention = none): there is no most attended source "
                              "piece to copy in place of <unk> (--replace-unk)")
        self.tokenizers = tokenizers
        self._sources: deque[str] = deque()  # read, not yet translated: a chunk or two

    def reading(self, lines: Iterable[str]) -> Iterator[str]:
        for line in lines:
            self._sources.append(line)
            yield line

    def mended(self, results: Iterable[list[Translation]], *, keep_attention: bool) -> Iterator[list[Translation]]:
        """`results` with every <unk> replaced; each carries its attention only with `keep_attention`."""
        for hypotheses in results:
            source = self._sources.popleft()
            mended = (with_unknowns_copied(hyp, source, self.tokenizers) for hyp in hypotheses)
            yield [hyp if keep_attention else hyp._replace(attention=None) for hyp in mended]


def with_unknowns_copied(hyp: Translation, source: str, tokenizers: Tokenizers) -> Translation:
    """`hyp` (translated from `source`, with its attention) whose text has, in place of each <unk>, the original
    characters of the source piece that <unk> attended to most. The copy starts a word where the source piece
    did; the rest of the text is the decoded text, piece for piece. Pieces, ids and score stay as they are."""
    if UNK_ID not in hyp.tokens or hyp.attention is None:
        return hyp
    spans = tokenizers.src.spans(source)[: len(hyp.attention.src_tokens)]  # a line cut by max_source_pieces: its start
    attended = hyp.attention.weights[: len(hyp.tokens), : len(spans)].argmax(dim=1).tolist()  # the source's EOS left out
    text = ""
    for position, (token, surface) in enumerate(zip(hyp.tokens, tokenizers.tgt.surfaces(hyp.tokens))):
        if token != UNK_ID:
            text += surface
            continue
        word_start, copied = _copied(spans, attended[position])
        text += (" " if word_start and text and not text[-1].isspace() else "") + copied
    return hyp._replace(text=text)


def _copied(spans: list[Span], index: int) -> tuple[bool, str]:
    """Whether the source piece at `index` starts a word, and its characters without the spaces around them.

    A piece with no characters of its own, a bare word boundary or the first bytes of a character spelled in
    bytes, stands for what follows it: the pieces after it are taken up to the first with characters.
    """
    taken = [spans[index]]
    while not taken[-1].text.strip() and index + len(taken) < len(spans):
        taken.append(spans[index + len(taken)])
    return any(span.piece.startswith(WORD_START) for span in taken), "".join(span.text for span in taken).strip()
