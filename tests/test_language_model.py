"""A language model (`seq2seq train` with no source): its math against torch's own LSTM, training, perplexity
equal to the validation loss training logged, seeded samples that continue their prompts, and one clear line
for every mix of language-model and translation options."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import seq2seq
from cli.main import app
from seq2seq import checkpoint
from seq2seq.config import ModelConfig, SearchConfig
from seq2seq.errors import ConfigError
from seq2seq.language_model import LanguageModel
from seq2seq.tokenizer import BOS_ID, EOS_ID, Tokenizers
from tests.conftest import save_untrained_model, synthetic_pairs

runner = CliRunner()
SMALL = ["--hidden-dim", "32", "--emb-dim", "16", "--vocab-size", "60", "--batch-tokens", "400"]


def _lines(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def text_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Target-side text of the synthetic task: training and validation lines, no empty ones."""
    folder = tmp_path_factory.mktemp("text")
    return (_lines(folder / "train.txt", synthetic_pairs(400, seed=3)[1]),
            _lines(folder / "valid.txt", synthetic_pairs(30, seed=4)[1]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, text_files: tuple[str, str]) -> Path:
    """A language model trained for 40 updates, validated at the end (best.pt is that step's)."""
    run = tmp_path_factory.mktemp("lm") / "run"
    result = runner.invoke(app, ["train", "--target", text_files[0], "--valid-target", text_files[1], "-o", str(run),
                                 "--max-steps", "40", "--valid-every", "40", *SMALL, "-q"])
    assert result.exit_code == 0, result.output
    return run


def test_teacher_forcing_matches_torch_lstm_with_the_same_weights() -> None:
    """The model's logits are those of torch's LSTM (gates i, f, g, o) run over BOS + y, then the output layer."""
    torch.manual_seed(0)
    model = LanguageModel(30, ModelConfig(language_model=True, attention="none", input_feeding=False, emb_dim=8,
                                          hidden_dim=12, layers=2)).eval()
    reference = nn.LSTM(8, 12, num_layers=2, batch_first=True)
    with torch.no_grad():
        for layer, cell in enumerate(model.cells):
            getattr(reference, f"weight_ih_l{layer}").copy_(cell.input_map.weight)
            getattr(reference, f"bias_ih_l{layer}").copy_(cell.input_map.bias)
            getattr(reference, f"weight_hh_l{layer}").copy_(cell.hidden_map.weight)
            getattr(reference, f"bias_hh_l{layer}").zero_()
    tgt_in = torch.tensor([[BOS_ID, 5, 9, 7], [BOS_ID, 4, 4, 11]])
    no_source = torch.full((2, 1), EOS_ID)
    with torch.no_grad():
        logits = model(no_source, torch.tensor([1, 1]), tgt_in)
        expected = model.out(reference(model.tgt_embed(tgt_in))[0])
    torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_stepping_gives_the_teacher_forced_log_probabilities(cell: str) -> None:
    """decode_step, one token at a time from `encode`'s state, equals the teacher-forced pass: search and training agree."""
    torch.manual_seed(1)
    model = LanguageModel(25, ModelConfig(language_model=True, attention="none", input_feeding=False, cell=cell,
                                          emb_dim=8, hidden_dim=10)).eval()
    tgt_in = torch.tensor([[BOS_ID, 6, 3, 8, 9]])
    with torch.no_grad():
        forced = torch.log_softmax(model(torch.full((1, 1), EOS_ID), torch.tensor([1]), tgt_in), dim=-1)[0]
        memory, state = model.encode(torch.full((1, 1), EOS_ID), torch.tensor([1]))
        for t in range(tgt_in.size(1)):
            log_probs, state = model.decode_step(tgt_in[:, t], state, memory)
            torch.testing.assert_close(log_probs[0], forced[t])


def test_train_makes_a_language_model_that_info_names(trained: Path) -> None:
    loaded = checkpoint.load(trained / "best.pt")
    assert isinstance(loaded.model, LanguageModel)
    assert (loaded.config.model.language_model, loaded.config.model.attention, loaded.config.train.select_metric) == \
        (True, "none", "loss")
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    validations = [record for record in records if "valid_loss" in record]
    assert validations and not any("valid_bleu" in record for record in validations)
    shown = runner.invoke(app, ["info", str(trained / "best.pt")])
    assert shown.exit_code == 0 and "language model" in shown.output


def test_perplexity_equals_exp_of_the_logged_validation_loss(trained: Path, text_files: tuple[str, str]) -> None:
    """Force-scoring the validation file counts the same pieces (EOS included) as validation did."""
    record = checkpoint.load(trained / "best.pt").info
    perplexity = seq2seq.Perplexity()
    for scored in seq2seq.load(trained / "best.pt").score(None, Path(text_files[1]).read_text().splitlines()):
        perplexity.add(scored)
    assert perplexity.per_piece == pytest.approx(math.exp(record["valid_loss"]), rel=1e-4)
    shown = runner.invoke(app, ["translate", "-m", str(trained / "best.pt"), "--score-target", text_files[1]])
    assert shown.exit_code == 0, shown.output
    assert f"perplexity {perplexity.per_piece:.3f} per piece" in shown.stderr
    scores = [float(line) for line in shown.stdout.splitlines()]
    assert len(scores) == 30 and sum(scores) == pytest.approx(perplexity.log_prob, rel=1e-4)
    characters = sum(len(line) + 1 for line in Path(text_files[1]).read_text().splitlines())
    assert perplexity.characters == characters
    assert perplexity.per_character == pytest.approx(math.exp(-perplexity.log_prob / characters))


def test_samples_continue_their_prompts_and_repeat_with_the_seed(trained: Path) -> None:
    translator = seq2seq.load(trained / "best.pt", sample=True, seed=5, max_length_constant=12)
    prompts = ["", "EHT", "", "TAC TAS NO"]
    samples = [hyps[0] for hyps in translator.translate(prompts)]
    assert all(sample.text.startswith(prompt) for sample, prompt in zip(samples, prompts))
    assert all(len(sample.tokens) < 12 or sample.text.startswith("TAC TAS NO") for sample in samples)
    one_by_one = [hyps[0].text for hyps in translator.translate(prompts, batch_size=1, chunk_lines=1)]
    assert one_by_one == [sample.text for sample in samples]  # the same, whatever the batch
    other_seed = [hyps[0].text for hyps in translator.translate(prompts, seed=6)]
    assert other_seed != [sample.text for sample in samples]


def test_the_command_continues_its_input_lines_and_says_so(trained: Path) -> None:
    result = runner.invoke(app, ["translate", "-m", str(trained / "best.pt"), "--sample", "--seed", "3",
                                 "--max-length-constant", "12"], input="EHT\nTAC\n")
    assert result.exit_code == 0, result.output
    outputs = result.stdout.splitlines()
    assert len(outputs) == 2 and outputs[0].startswith("EHT") and outputs[1].startswith("TAC")
    assert "continued 2 lines" in result.stderr and "translated" not in result.stderr


def test_the_best_continuation_scores_as_force_scoring_says(trained: Path) -> None:
    """Beam search from an empty prompt, then force-scoring its output: the same log-probability."""
    translator = seq2seq.load(trained / "best.pt", beam_size=3)
    best = translator.translate(["", "TAC"])
    scored = translator.score(None, [hyps[0].text for hyps in best])
    assert [s.score for s in scored] == pytest.approx([hyps[0].score for hyps in best], abs=1e-4)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--prefix", "{valid}"], "input lines are its prompts"),
    (["--alignment"], "no attention (a language model)"),
    (["--score-target", "{valid}", "-i", "{valid}"], "reads no source"),
    (["-m", "{translation}"], "one is a language model"),
])
def test_mixing_language_model_and_translation_options_is_one_line(
        trained: Path, text_files: tuple[str, str], tmp_path: Path, tokenizers: Tokenizers,
        arguments: list[str], message: str) -> None:
    translation = save_untrained_model(tmp_path / "translation.pt", tokenizers, SearchConfig())
    filled = [argument.format(valid=text_files[1], translation=translation) for argument in arguments]
    result = runner.invoke(app, ["translate", "-m", str(trained / "best.pt"), *filled], input="EHT\n")
    assert result.exit_code != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_translation_model_needs_sources_to_score(tmp_path: Path, tokenizers: Tokenizers) -> None:
    translator = seq2seq.load(save_untrained_model(tmp_path / "translation.pt", tokenizers, SearchConfig()))
    with pytest.raises(ConfigError, match="give the sources too"):
        translator.score(None, ["A B"])


def test_settings_that_contradict_a_language_model_are_refused(tmp_path: Path, text_files: tuple[str, str]) -> None:
    for flags, message in ((["--select-metric", "bleu"], "judged by its validation perplexity"),
                           (["--set", "model.attention=bahdanau"], "no source to attend to")):
        result = runner.invoke(app, ["train", "--target", text_files[0], "--valid-target", text_files[1],
                                     "-o", str(tmp_path / "run"), *flags])
        assert result.exit_code != 0 and message in result.stderr, result.stderr
    cfg, _ = seq2seq.settings_for_run(None, {"data.target": text_files[0], "data.valid_target": text_files[1],
                                             "data.source": text_files[0], "data.valid_source": text_files[1],
                                             "model.language_model": True, "model.attention": "none",
                                             "model.input_feeding": False, "train.select_metric": "loss",
                                             "train.valid_metrics": ""}, output=tmp_path / "run")
    with pytest.raises(ConfigError, match="reads no source"):
        seq2seq.train(cfg, tmp_path / "run")


@pytest.mark.parametrize("tokenizer", ["char", "word"])
def test_a_language_model_trains_on_characters_or_words(tmp_path: Path, text_files: tuple[str, str], tokenizer: str) -> None:
    result = runner.invoke(app, ["train", "--target", text_files[0], "--valid-target", text_files[1],
                                 "-o", str(tmp_path / "run"), "--max-steps", "2", "--valid-every", "2",
                                 "--tokenizer-type", tokenizer, *SMALL, "-q"])
    assert result.exit_code == 0, result.output
    translator = seq2seq.load(tmp_path / "run" / "best.pt", sample=True, seed=1)
    assert translator.translate(["TAC"])[0][0].text.startswith("TAC")


def test_a_resumed_language_model_run_equals_an_uninterrupted_one(tmp_path: Path, text_files: tuple[str, str]) -> None:
    common = ["--target", text_files[0], "--valid-target", text_files[1], "--valid-every", "3", *SMALL, "-q"]
    whole = runner.invoke(app, ["train", *common, "-o", str(tmp_path / "whole"), "--max-steps", "6"])
    half = runner.invoke(app, ["train", *common, "-o", str(tmp_path / "parts"), "--max-steps", "3"])
    rest = runner.invoke(app, ["train", *common, "-o", str(tmp_path / "parts"), "--max-steps", "6", "--resume"])
    assert whole.exit_code == half.exit_code == rest.exit_code == 0, rest.output
    one, other = (checkpoint.load(tmp_path / name / "last.pt").model.state_dict() for name in ("whole", "parts"))
    assert all(torch.equal(one[name], other[name]) for name in one)
