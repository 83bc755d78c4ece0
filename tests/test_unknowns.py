"""Characters never seen in training: byte fallback in new models, `--replace-unk` for the <unk> of the others."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from seq2seq import checkpoint
from seq2seq.config import Config, ModelConfig, SearchConfig, TokenizerConfig
from seq2seq.errors import ConfigError
from seq2seq.tokenizer import UNK_ID, Tokenizer, Tokenizers
from seq2seq.translation import SourceAttention, Translation
from seq2seq.translator import load
from seq2seq.unknowns import with_unknowns_copied

runner = CliRunner()
SEARCH = SearchConfig(beam_size=2, batch_size=2, max_length_constant=4)
UNSEEN = "東京 🙂"  # characters the synthetic corpus never has: <unk> to its small tokenizer


def _unk_model_file(folder: Path, tokenizers: Tokenizers, *, attention: str = "bahdanau") -> Path:
    """An untrained tiny model whose output layer favours <unk> so much that it writes nothing else."""
    config = Config(model=ModelConfig(emb_dim=8, hidden_dim=16, attention=attention), search=SEARCH)
    torch.manual_seed(0)
    model = checkpoint.build_model(config, tokenizers)
    with torch.no_grad():
        model.out.bias[UNK_ID] = 100.0
    path = folder / f"unk-{attention}.pt"
    checkpoint.save(path, config=config, tokenizers=tokenizers, model=model, step=1)
    return path


@pytest.fixture(scope="module")
def byte_tokenizer(corpus: tuple[list[str], list[str]]) -> Tokenizer:
    return Tokenizer.train(corpus[0], TokenizerConfig(vocab_size=1024))


@pytest.fixture(scope="module")
def unk_model(tmp_path_factory: pytest.TempPathFactory, tokenizers: Tokenizers) -> Path:
    return _unk_model_file(tmp_path_factory.mktemp("unk"), tokenizers)


def _attending(tokens: list[int], source_pieces: int, looked_at: dict[int, int]) -> SourceAttention:
    """Attention whose output piece `t` looks at source piece `looked_at[t]` more than at any other piece, and
    more still at the source's EOS, which is no piece to copy."""
    weights = torch.full((len(tokens) + 1, source_pieces + 1), 0.1)
    weights[:, -1] = 0.5
    for target, source in looked_at.items():
        weights[target, source] = 0.4
    return SourceAttention(list(range(4, 4 + source_pieces)), weights)


# "ｃａｔ sat in 東京" cuts into ▁cat (written ｃａｔ) ▁sat ▁in ▁ 東京 (<unk>);
# "the 東京 dog" and one more <unk> into ▁the ▁ <unk> ▁ d o g <unk>.
SOURCE = "ｃａｔ sat in 東京"


@pytest.mark.parametrize(("first", "second", "expected"), [
    (4, 0, "the 東京 dog ｃａｔ"),   # <unk> itself: its characters; a word-starting piece: as a word, as written
    (3, 1, "the 東京 dog sat"),      # a bare word boundary (▁) stands for the piece after it
    (2, 4, "the in dog東京"),        # the source's <unk> did not start a word
])
def test_each_unk_becomes_the_original_text_of_the_source_piece_it_attended_to_most(
    tokenizers: Tokenizers, first: int, second: int, expected: str,
) -> None:
    tokens = [*tokenizers.tgt.encode(["the 東京 dog"])[0], UNK_ID]
    assert tokenizers.tgt.pieces(tokens) == ["▁the", "▁", "<unk>", "▁", "d", "o", "g", "<unk>"]
    assert [span.piece for span in tokenizers.src.spans(SOURCE)] == ["▁cat", "▁sat", "▁in", "▁", "東京"]
    unks = [position for position, token in enumerate(tokens) if token == UNK_ID]
    hyp = Translation(tokenizers.tgt.decode([tokens])[0], -1.5, tokens, _attending(tokens, 5, dict(zip(unks, (first, second)))))

    mended = with_unknowns_copied(hyp, SOURCE, tokenizers)
    assert mended.text == expected
    assert (mended.tokens, mended.score, mended.attention) == (hyp.tokens, hyp.score, hyp.attention)


def test_a_line_cut_by_max_source_pieces_copies_from_the_part_translated(tokenizers: Tokenizers) -> None:
    tokens = [*tokenizers.tgt.encode(["the"])[0], UNK_ID]
    hyp = Translation("the ⁇ ", -1.0, tokens, _attending(tokens, 2, {1: 1}))  # the model read ▁cat ▁sat
    assert with_unknowns_copied(hyp, SOURCE, tokenizers).text == "the sat"


def test_a_translation_without_unk_is_left_as_it_is(tokenizers: Tokenizers) -> None:
    tokens = tokenizers.tgt.encode(["the cat"])[0]
    hyp = Translation("the cat", -0.5, tokens, _attending(tokens, 2, {}))
    assert with_unknowns_copied(hyp, "the cat", tokenizers) is hyp


def test_the_first_bytes_of_a_character_stand_for_the_character(tokenizers: Tokenizers, byte_tokenizer: Tokenizer) -> None:
    mixed = Tokenizers(byte_tokenizer, tokenizers.tgt)  # a byte-fallback source, a target with <unk>
    spans = byte_tokenizer.spans("in 東京")
    assert [span.piece for span in spans][:3] == ["▁in", "▁", "<0xE6>"] and spans[2].text == ""
    tokens = [*tokenizers.tgt.encode(["the"])[0], UNK_ID]
    hyp = Translation("the ⁇ ", -1.0, tokens, _attending(tokens, len(spans), {1: 2}))
    assert with_unknowns_copied(hyp, "in 東京", mixed).text == "the東"


def test_replace_unk_puts_the_source_characters_in_place_of_every_unk(unk_model: Path) -> None:
    lines = f"{UNSEEN}\n\nthe cat sat\n"
    plain = runner.invoke(app, ["translate", "-m", str(unk_model), "-q"], input=lines)
    assert plain.exit_code == 0, plain.output
    assert "⁇" in plain.stdout  # the model writes <unk> only

    replaced = runner.invoke(app, ["translate", "-m", str(unk_model), "-q", "--replace-unk"], input=lines)
    assert replaced.exit_code == 0, replaced.output
    first, empty, third = replaced.stdout.split("\n")[:-1]
    assert "⁇" not in replaced.stdout and empty == ""
    assert first.split() and set(first.split()) <= {"東京", "🙂"}
    assert third.split() and set(third.split()) <= {"the", "cat", "sat"}
    aligned = runner.invoke(app, ["translate", "-m", str(unk_model), "-q", "--replace-unk", "--alignment", "--nbest", "2"],
                            input=lines)
    assert aligned.exit_code == 0 and "⁇" not in aligned.stdout
    assert all(row.count(" ||| ") == 3 for row in aligned.stdout.splitlines())


def test_the_library_option_keeps_attention_only_when_asked_for(unk_model: Path) -> None:
    translator = load(unk_model, device="cpu")
    [[plain]] = translator.translate([UNSEEN])
    [[replaced]] = translator.translate([UNSEEN], replace_unk=True)
    [[both]] = translator.translate([UNSEEN], replace_unk=True, attention=True)
    assert "⁇" in plain.text and set(replaced.text.split()) <= {"東京", "🙂"}
    assert replaced.tokens == plain.tokens and replaced.score == plain.score
    assert replaced.attention is None and plain.attention is None
    assert both.text == replaced.text and both.attention is not None
    [[cut]] = translator.translate([f"{UNSEEN} the cat sat"], replace_unk=True, max_source_pieces=2)  # ▁ 東京
    assert "東京" in cut.text and not cut.text.replace("東京", "").strip()  # never 🙂, which was cut off


def _refuse_to_be_read():
    raise AssertionError("a line was read before the options were checked")
    yield


def test_a_model_without_attention_refuses_replace_unk_in_one_line(tmp_path: Path, tokenizers: Tokenizers) -> None:
    path = _unk_model_file(tmp_path, tokenizers, attention="none")
    with pytest.raises(ConfigError, match=r"no attention .*\(--replace-unk\)"):
        load(path, device="cpu").stream(_refuse_to_be_read(), replace_unk=True)
    result = runner.invoke(app, ["translate", "-m", str(path), "--replace-unk"], input="the cat\n")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: this model has no attention") and result.stderr.count("\n") == 1


def test_a_new_model_keeps_unseen_characters_and_an_old_one_loads_and_translates_as_before(
    tmp_path: Path, tokenizers: Tokenizers, unk_model: Path, make_data_config,
) -> None:
    data = make_data_config(tmp_path, train=200, valid=10, seed=3)
    run = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--source", data.source, "--target", data.target, "--valid-source", data.valid_source,
        "--valid-target", data.valid_target, "--output", str(run), "--vocab-size", "1024", "--emb-dim", "8",
        "--hidden-dim", "16", "--max-steps", "2", "--valid-every", "2", "-q"])
    assert result.exit_code == 0, result.output
    trained = checkpoint.load(run / "best.pt")
    assert trained.config.tokenizer.byte_fallback
    text = f"naïve {UNSEEN}"
    ids = trained.tokenizers.src.encode([text])[0]
    assert UNK_ID not in ids and trained.tokenizers.tgt.decode([ids]) == [text]

    # a model file from before tokenizer.byte_fallback: its config lacks the setting
    payload = torch.load(unk_model, weights_only=True)
    del payload["config"]["tokenizer"]["byte_fallback"]
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    before = load(unk_model, device="cpu").translate([UNSEEN, "the cat"])
    assert load(old, device="cpu").translate([UNSEEN, "the cat"]) == before
    assert UNK_ID in checkpoint.load(old).tokenizers.src.encode([UNSEEN])[0]



def test_joined_surfaces_are_the_decoded_text_and_byte_fallback_never_needs_unk(byte_tokenizer: Tokenizer) -> None:
    rng = random.Random(0)
    alphabet = [*map(chr, range(0x20, 0x7F)), *map(chr, range(0xA0, 0x2FFF)), *map(chr, range(0x1F300, 0x1F6FF))]
    texts = ["".join(rng.choices(alphabet, k=rng.randint(1, 30))) for _ in range(50)]
    encoded = byte_tokenizer.encode(texts)
    assert all(UNK_ID not in ids for ids in encoded)
    assert ["".join(byte_tokenizer.surfaces(ids)) for ids in encoded] == byte_tokenizer.decode(encoded)
