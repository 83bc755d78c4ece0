"""Attention you can look at: weights read from the decoder's own steps, hard alignments, pictures per line."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from seq2seq import checkpoint
from seq2seq.config import Config, ModelConfig, SearchConfig
from seq2seq.errors import ConfigError
from seq2seq.model import Attention, Memory
from seq2seq.plotting import attention_picture_size
from seq2seq.tokenizer import BOS_ID, EOS_ID, Tokenizers
from seq2seq.translation import hard_alignment, translate

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LINES = ["the cat sat on a mat", "", "small red houses", "the dog ran far away past the river"]
SEARCH = SearchConfig(beam_size=2, batch_size=2, max_length_constant=4)


def _model_file(folder: Path, tokenizers: Tokenizers, *, attention: str = "bahdanau") -> Path:
    """An untrained tiny model with weights wide enough that its attention is far from uniform."""
    config = Config(model=ModelConfig(emb_dim=8, hidden_dim=16, attention=attention), search=SEARCH)
    torch.manual_seed(0)
    model = checkpoint.build_model(config, tokenizers)
    with torch.no_grad():
        for param in model.parameters():
            param.uniform_(-0.8, 0.8)
    path = folder / f"{attention}.pt"
    checkpoint.save(path, config=config, tokenizers=tokenizers, model=model, step=1)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory, tokenizers: Tokenizers) -> Path:
    return _model_file(tmp_path_factory.mktemp("model"), tokenizers)


@pytest.mark.parametrize("attention", ["bahdanau", "luong-dot", "luong-general"])
def test_attention_weights_are_those_the_decoder_steps_compute(make_model, attention: str) -> None:
    model = make_model(src_vocab=17, tgt_vocab=19, attention=attention, layers=2, scale=0.5)
    src = torch.tensor([[5, 6, 7, 8, EOS_ID], [9, 10, EOS_ID, 0, 0]])
    src_lens = torch.tensor([5, 3])
    tgt_in = torch.tensor([[BOS_ID, 4, 11, 12], [BOS_ID, 13, 0, 0]])

    with torch.no_grad():
        forced = model.attention_weights(src, src_lens, tgt_in)  # (batch, tgt_len, src_len)
        memory, state = model.encode(src, src_lens)
        stepped = []
        for t in range(tgt_in.size(1)):  # what decode_step does, keeping the weights `_step` returns
            gates = model.cells[0].input_map(model.tgt_embed(tgt_in[:, t]))
            _, state, weights = model._step(gates, state, memory)
            stepped.append(weights)

    torch.testing.assert_close(forced, torch.stack(stepped, dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(forced.sum(-1), torch.ones(2, 4))
    assert forced[1, :, 3:].abs().max() == 0, "padding gets no attention"


def test_bahdanau_weights_equal_the_textbook_tanh_formula() -> None:
    """The sigmoid form (2 v . sigmoid(2K + 2q)) gives the weights of softmax(v . tanh(W_k h_j + W_q s + b))."""
    torch.manual_seed(0)
    attention = Attention("bahdanau", 16)
    values = torch.randn(3, 5, 16)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 4 + [False]])
    query = torch.randn(3, 16)
    context, weights = attention(query, Memory(values, attention.keys(values), mask))
    energy = torch.tanh(attention.key_map(values) + attention.query_map(query).unsqueeze(1)) @ attention.energy.weight[0]
    expected = torch.softmax(energy.masked_fill(~mask, float("-inf")), dim=-1)
    assert torch.allclose(weights, expected, atol=1e-6)
    assert torch.allclose(context, torch.einsum("bs,bsh->bh", expected, values), atol=1e-6)
    assert not torch.allclose(expected[0], torch.full((5,), 0.2), atol=1e-3), "the weights should not be uniform"


@pytest.mark.parametrize("kind", ["bahdanau", "luong-dot", "luong-general"])
def test_grouped_queries_attend_to_their_own_sentence_as_with_a_repeated_memory(kind: str) -> None:
    """Beam search gives 3 queries per sentence and one memory row each: the same as repeating the memory per beam."""
    torch.manual_seed(1)
    attention = Attention(kind, 8)
    values = torch.randn(2, 4, 8)
    mask = torch.tensor([[True] * 4, [True] * 2 + [False] * 2])
    queries = torch.randn(6, 8)  # sentence 0's beams, then sentence 1's
    shared = attention(queries, Memory(values, attention.keys(values), mask))
    repeated_values, repeated_mask = values.repeat_interleave(3, dim=0), mask.repeat_interleave(3, dim=0)
    repeated = attention(queries, Memory(repeated_values, attention.keys(repeated_values), repeated_mask))
    for got, expected in zip(shared, repeated):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert shared[1][3:, 2:].abs().max() == 0, "sentence 1's beams never attend to its padding"
    assert not torch.allclose(shared[1][0], shared[1][3]), "the two sentences' beams attend differently"


def test_hard_alignment_pairs_each_output_piece_with_its_most_attended_source_piece() -> None:
    # Two source pieces + EOS (columns), three output pieces + EOS (rows).
    weights = torch.tensor([
        [0.1, 0.8, 0.1],  # output piece 0 looks at source piece 1
        [0.7, 0.2, 0.1],  # output piece 1 looks at source piece 0
        [0.2, 0.1, 0.7],  # output piece 2 looks at the source's EOS: left unaligned
        [0.9, 0.0, 0.1],  # the output's EOS row never counts
    ])
    assert hard_alignment(weights) == [(1, 0), (0, 1)]
    assert hard_alignment(torch.tensor([[0.3, 0.7]])) == []  # an empty output: only its EOS row


def test_a_model_without_attention_refuses_at_once(tmp_path: Path, tokenizers: Tokenizers) -> None:
    path = _model_file(tmp_path, tokenizers, attention="none")
    loaded = checkpoint.load(path)
    with pytest.raises(ConfigError, match="no attention"):
        translate(loaded.model, loaded.tokenizers, iter(()), SEARCH, attention=True)  # before any line is read
    for option in (["--alignment"], ["--attention-plot", str(tmp_path / "pictures")]):
        result = runner.invoke(app, ["translate", "-m", str(path), *option], input="the cat\n")
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: this model has no attention") and result.stderr.count("\n") == 1
        assert result.stdout == ""
    assert not (tmp_path / "pictures").exists()


def _best(model_file: Path, lines: list[str], **options):
    loaded = checkpoint.load(model_file)
    return loaded.tokenizers, list(translate(loaded.model, loaded.tokenizers, lines, SEARCH, attention=True, **options))


def test_alignment_lines_have_one_pair_set_per_input_line_within_the_piece_counts(model_file: Path) -> None:
    plain = runner.invoke(app, ["translate", "-m", str(model_file), "-q"], input="\n".join(LINES) + "\n")
    aligned = runner.invoke(app, ["translate", "-m", str(model_file), "--alignment", "-q"], input="\n".join(LINES) + "\n")
    assert plain.exit_code == aligned.exit_code == 0, aligned.output

    rows = [line.split(" ||| ") for line in aligned.stdout.split("\n")[:-1]]
    assert len(rows) == len(LINES) and all(len(row) == 2 for row in rows)
    assert [text for text, _ in rows] == plain.stdout.split("\n")[:-1], "the translations are those without --alignment"
    tokenizers, found = _best(model_file, LINES)
    pairs_seen = 0
    for line, (_, pairs), nbest in zip(LINES, rows, found):
        source_pieces, output_pieces = len(tokenizers.src.encode([line])[0]), len(nbest[0].tokens)
        for pair in pairs.split():
            source, target = map(int, pair.split("-"))
            assert 0 <= source < source_pieces and 0 <= target < output_pieces, (line, pair)
            pairs_seen += 1
    assert rows[1] == ["", ""], "an empty line: no translation, no alignment"
    assert pairs_seen > 3


def test_nbest_puts_each_alignment_after_its_hypothesis(model_file: Path) -> None:
    result = runner.invoke(app, ["translate", "-m", str(model_file), "--nbest", "2", "--alignment", "-q"],
                           input="the cat sat\nsmall houses\n")
    assert result.exit_code == 0, result.output
    rows = [line.split(" ||| ") for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == ["0", "0", "1", "1"]
    assert all(len(row) == 4 and float(row[3]) <= 0 for row in rows)
    assert all(all(pair.count("-") == 1 for pair in row[2].split()) for row in rows)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_attention_pictures_are_pngs_sized_by_their_pieces_one_per_nonempty_line(model_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    source = tmp_path / "test.src"
    source.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    pictures = tmp_path / "attention"
    result = runner.invoke(app, ["translate", "-m", str(model_file), "-i", str(source), "--attention-plot", str(pictures), "-q"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == len(LINES)

    assert sorted(path.name for path in pictures.iterdir()) == ["line-000001.png", "line-000003.png", "line-000004.png"]
    tokenizers, found = _best(model_file, LINES)
    for number in (1, 3, 4):
        picture = pictures / f"line-{number:06d}.png"
        columns = len(tokenizers.src.encode([LINES[number - 1]])[0]) + 1  # + EOS
        rows = len(found[number - 1][0].tokens) + 1
        assert _png_size(picture.read_bytes()) == attention_picture_size(columns, rows)
        pixels = imread(picture)
        colours = {tuple(pixel) for pixel in pixels.reshape(-1, pixels.shape[-1])[::5].round(2).tolist()}
        assert len(colours) > 20  # a heatmap, labels and a colour bar, not a blank canvas
        assert (pixels[..., :3] < 0.5).any(axis=-1).mean() > 0.01  # some dark ink


def test_missing_matplotlib_stops_before_anything_is_translated(model_file: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` now raises ImportError, as when not installed
    result = runner.invoke(app, ["translate", "-m", str(model_file), "--attention-plot", str(tmp_path / "pics")],
                           input="the cat\n")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip() == "error: drawing pictures needs matplotlib: pip install 'seq2seq[plot]' (or pip install matplotlib)"
