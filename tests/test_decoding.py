"""Decoding beyond the best output: force-scoring, ensembles, sampling, forced prefixes, no repeated n-grams.

Each is checked against what it must equal: a score against the one beam search printed, an
ensemble of one against its model, sampling at top-k 1 against greedy, sample frequencies against
the probabilities they are drawn from.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from seq2seq import ConfigError, DataError, Translator
from seq2seq.config import SearchConfig, TokenizerConfig
from seq2seq.ensemble import Ensemble
from seq2seq.search import Sampler
from seq2seq.tokenizer import Tokenizers, train_tokenizers

pytestmark = pytest.mark.filterwarnings("ignore")
runner = CliRunner()


@pytest.fixture(scope="module")
def tokenizers(corpus: tuple[list[str], list[str]]) -> Tokenizers:
    """Whole words as pieces: any output's text encodes back to the very pieces the search wrote, so a
    score of the text is a score of the output (subword pieces can decode to text that encodes otherwise)."""
    return train_tokenizers(*corpus, TokenizerConfig(model_type="word", vocab_size=100))


@pytest.fixture
def model(make_model, tokenizers: Tokenizers):
    vocab = tokenizers.src.vocab_size
    return make_model(src_vocab=vocab, tgt_vocab=vocab, seed=3, scale=0.5)


@pytest.fixture
def lines(corpus: tuple[list[str], list[str]]) -> list[str]:
    return corpus[0][:12]


def translator(model, tokenizers: Tokenizers, **search) -> Translator:
    return Translator(model, tokenizers, SearchConfig(**search), device="cpu")


def texts(found) -> list[list[str]]:
    return [[t.text for t in nbest] for nbest in found]


def test_a_beam_output_scores_what_the_search_printed(model, tokenizers: Tokenizers, lines: list[str]) -> None:
    search = translator(model, tokenizers, beam_size=4)
    found = search.translate(lines, nbest=3)
    outputs = [t.text for nbest in found for t in nbest]
    scored = search.score([line for line, nbest in zip(lines, found) for _ in nbest], outputs)
    for translation, target in zip((t for nbest in found for t in nbest), scored):
        assert target.tokens == translation.tokens
        assert target.score == pytest.approx(translation.score, abs=1e-4)
        assert len(target.token_scores) == len(target.tokens) + 1
        assert sum(target.token_scores) == pytest.approx(target.score)


def test_an_empty_target_scores_only_the_end_of_sentence(model, tokenizers: Tokenizers, lines: list[str]) -> None:
    scored = translator(model, tokenizers).score(lines[:3], ["", "", ""])
    (eos_only,) = translator(model, tokenizers, beam_size=1, max_length_ratio=0.0, max_length_constant=0).translate(
        lines[:1])  # a length limit of 1: the first step may only write EOS, at its real log-probability
    assert [target.tokens for target in scored] == [[], [], []]
    assert scored[0].token_scores == [pytest.approx(eos_only[0].score, abs=1e-5)]
    assert scored[0].score < 0


def test_sources_and_targets_of_different_lengths_are_one_clear_error(model, tokenizers: Tokenizers) -> None:
    with pytest.raises(DataError, match="the targets has 1 lines but the sources has more"):
        translator(model, tokenizers).score(["a b", "c"], ["x"])


@pytest.mark.parametrize("beam_size", [1, 4])
def test_an_ensemble_of_one_model_is_that_model(model, tokenizers: Tokenizers, lines: list[str], beam_size: int) -> None:
    alone = translator(model, tokenizers, beam_size=beam_size).translate(lines, nbest=beam_size, attention=True)
    ensemble = translator(Ensemble([model]), tokenizers, beam_size=beam_size).translate(lines, nbest=beam_size,
                                                                                         attention=True)
    assert texts(ensemble) == texts(alone)
    for one, other in zip((t for n in alone for t in n), (t for n in ensemble for t in n)):
        assert other.score == pytest.approx(one.score, abs=1e-4)
        assert torch.allclose(other.attention.weights, one.attention.weights, atol=1e-5)


def test_a_model_ensembled_with_itself_gives_the_same_output_and_scores(model, tokenizers: Tokenizers,
                                                                         lines: list[str]) -> None:
    alone = translator(model, tokenizers).translate(lines, nbest=2)
    twice = translator(Ensemble([model, model], [0.3, 0.7]), tokenizers).translate(lines, nbest=2)
    assert texts(twice) == texts(alone)
    assert [t.score for n in twice for t in n] == pytest.approx([t.score for n in alone for t in n], abs=1e-4)


def test_an_ensemble_mixes_the_models_probabilities(make_model, tokenizers: Tokenizers, lines: list[str]) -> None:
    vocab = tokenizers.src.vocab_size
    first, second = (make_model(src_vocab=vocab, tgt_vocab=vocab, seed=seed, scale=0.5) for seed in (3, 4))
    targets = [t.text for (t,) in translator(first, tokenizers).translate(lines)]
    each = [[s.score for s in translator(one, tokenizers).score(lines, targets)] for one in (first, second)]
    mixed = translator(Ensemble([first, second], [0.25, 0.75]), tokenizers).score(lines, targets)
    for row, target in enumerate(mixed):
        # the probability of a whole output is not a mixture of the models' (the mixture is taken at each
        # step), but it lies between the two models' and differs from both
        low, high = sorted((each[0][row], each[1][row]))
        assert low - 1e-4 <= target.score <= high + 1e-4


def test_an_ensemble_step_is_the_weighted_mixture_of_the_models_probabilities(make_model) -> None:
    first, second = (make_model(seed=seed, scale=0.5) for seed in (1, 2))
    src, src_lens, tokens = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]]), torch.tensor([4, 3]), torch.tensor([2, 2])
    with torch.no_grad():
        mixed, _ = Ensemble([first, second], [1.0, 3.0]).decode_step(tokens, *reversed(
            Ensemble([first, second]).encode(src, src_lens)))
        each = [model.decode_step(tokens, state, memory)[0].exp()
                for model in (first, second) for memory, state in [model.encode(src, src_lens)]]
    assert torch.allclose(mixed.exp(), 0.25 * each[0] + 0.75 * each[1], atol=1e-6)


def test_ensemble_weights_are_checked(model) -> None:
    with pytest.raises(ConfigError, match="gives 1 weights for 2 models"):
        Ensemble([model, model], [1.0])
    with pytest.raises(ConfigError, match="must all be positive"):
        Ensemble([model, model], [1.0, -1.0])


def test_sampling_at_top_k_1_or_a_tiny_temperature_is_greedy(model, tokenizers: Tokenizers, lines: list[str]) -> None:
    greedy = translator(model, tokenizers, beam_size=1).translate(lines)
    assert texts(translator(model, tokenizers, sample=True, top_k=1).translate(lines)) == texts(greedy)
    assert texts(translator(model, tokenizers, sample=True, temperature=1e-4).translate(lines)) == texts(greedy)


def test_samples_are_reproducible_and_do_not_depend_on_the_batch(model, tokenizers: Tokenizers, lines: list[str]) -> None:
    sampling = translator(model, tokenizers, sample=True, seed=7, batch_size=5)
    together = sampling.translate(lines, nbest=3)
    assert texts(sampling.translate(lines, nbest=3)) == texts(together)
    one_by_one = [sampling.translate([line], nbest=3)[0] for line in lines]
    # a line's samples depend on its line number, so the first line alone equals the first line in the batch
    assert texts(one_by_one[:1]) == texts(together[:1])
    assert texts(translator(model, tokenizers, sample=True, seed=8).translate(lines, nbest=3)) != texts(together)
    assert len({text for nbest in texts(together) for text in nbest}) > len(lines), "samples of a line differ"
    # the score is the model's log-probability of the sample, whatever the temperature
    scored = sampling.score([line for line in lines for _ in range(3)], [t.text for n in together for t in n])
    assert [s.score for s in scored] == pytest.approx([t.score for n in together for t in n], abs=1e-4)


def test_samples_keep_their_line_numbers_across_batches_and_chunks(model, tokenizers: Tokenizers,
                                                                   lines: list[str]) -> None:
    small = translator(model, tokenizers, sample=True, seed=7, batch_size=2)
    large = translator(model, tokenizers, sample=True, seed=7, batch_size=64)
    assert texts(small.stream(lines, nbest=2, chunk_lines=3)) == texts(large.translate(lines, nbest=2))


def test_sample_frequencies_match_the_probabilities() -> None:
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    draws = 20_000
    generator = torch.Generator().manual_seed(0)
    sampler = Sampler(torch.rand(draws, 1, generator=generator))
    tokens = sampler(probs.log().expand(draws, -1).clone(), 0, torch.arange(draws))
    counts = Counter(tokens.tolist())
    assert counts[4] == 0, "a piece of probability 0 is never drawn"
    chi_square = sum((counts[token] - draws * p) ** 2 / (draws * p) for token, p in enumerate(probs.tolist()) if p)
    assert chi_square < 16.27, chi_square  # the 0.999 quantile of chi-square with 3 degrees of freedom


def test_top_k_top_p_and_temperature_reshape_the_distribution() -> None:
    log_probs = torch.tensor([[0.5, 0.25, 0.15, 0.1]]).log()
    uniforms = torch.linspace(0, 0.9999, 1000).unsqueeze(1)

    def drawn(**options) -> Counter:
        sampler = Sampler(uniforms, **options)
        return Counter(sampler(log_probs.expand(1000, -1).clone(), 0, torch.arange(1000)).tolist())

    assert set(drawn(top_k=2)) == {0, 1}
    assert set(drawn(top_p=0.7)) == {0, 1}   # 0.5 alone is under 0.7; with 0.25, 0.75 covers it
    assert set(drawn(top_p=0.5)) == {0}
    assert drawn(temperature=0.5)[0] > drawn()[0] > drawn(temperature=2.0)[0]


@pytest.mark.parametrize("option, value, message", [
    ("temperature", -1.0, "search.temperature must be above 0"), ("top_p", 1.5, "search.top_p must be above 0"),
    ("top_p", 0.0, "search.top_p must be above 0"), ("top_k", -2, "search.top_k must be at least 0"),
    ("no_repeat_ngram", -1, "search.no_repeat_ngram must be at least 0"),
])
def test_bad_decoding_settings_are_one_clear_error(model, tokenizers: Tokenizers, option: str, value, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        translator(model, tokenizers).translate(["a"], **{option: value})


@pytest.mark.parametrize("beam_size", [1, 4])
def test_a_prefix_is_kept_and_the_model_completes_it(model, tokenizers: Tokenizers, lines: list[str], beam_size: int) -> None:
    search = translator(model, tokenizers, beam_size=beam_size)
    free = search.translate(lines)
    prefixes = ["the cat", "", *(["light"] * (len(lines) - 2))]
    forced = search.translate(lines, prefixes=prefixes)
    for prefix, (translation,) in zip(prefixes, forced):
        assert translation.text.startswith(prefix)
    assert forced[1] == free[1], "an empty prefix forces nothing"
    scored = search.score(lines, [t.text for (t,) in forced])
    assert [s.score for s in scored] == pytest.approx([t.score for (t,) in forced], abs=1e-4), "the score covers the prefix"


def test_the_model_s_own_greedy_output_as_prefix_changes_nothing(model, tokenizers: Tokenizers, lines: list[str]) -> None:
    greedy = translator(model, tokenizers, beam_size=1)
    free = greedy.translate(lines)
    again = greedy.translate(lines, prefixes=[t.text for (t,) in free])
    assert [(t.text, t.tokens) for (t,) in again] == [(t.text, t.tokens) for (t,) in free]
    assert [t.score for (t,) in again] == pytest.approx([t.score for (t,) in free], abs=1e-5)


def test_the_coverage_penalty_picks_the_beam_s_best_by_score_and_coverage(model, tokenizers: Tokenizers,
                                                                           lines: list[str]) -> None:
    beta, alpha = 30.0, 0.6
    # outputs shorter than their sources, so that some leave source pieces unread
    search = dict(beam_size=5, length_penalty=alpha, max_length_ratio=0.7, max_length_constant=0)
    whole_beam = translator(model, tokenizers, **search).translate(lines, nbest=5, attention=True)
    covered = translator(model, tokenizers, coverage_penalty=beta, **search).translate(lines)

    def gnmt(t) -> float:  # GNMT's s(Y, X) = log P(Y|X) / lp(Y) + cp(X; Y), worked out here on its own
        length_penalty = ((5 + len(t.tokens) + 1) / 6) ** alpha
        received = t.attention.weights[:, :-1].sum(dim=0).tolist()
        return t.score / length_penalty + beta * sum(math.log(min(max(r, 1e-6), 1.0)) for r in received)

    expected = [max(beam, key=gnmt).tokens for beam in whole_beam]
    assert [t.tokens for (t,) in covered] == expected
    assert expected != [beam[0].tokens for beam in whole_beam], "the penalty changed some choices"


def test_the_coverage_penalty_needs_attention(make_model, tokenizers: Tokenizers) -> None:
    vocab = tokenizers.src.vocab_size
    without = make_model(src_vocab=vocab, tgt_vocab=vocab, attention="none")
    with pytest.raises(ConfigError, match="the coverage penalty needs it"):
        translator(without, tokenizers, coverage_penalty=0.5).translate(["a"])


def test_a_prefix_list_of_another_length_is_one_clear_error(model, tokenizers: Tokenizers, lines: list[str]) -> None:
    with pytest.raises(DataError, match="prefixes has 1 lines but input lines has more"):
        translator(model, tokenizers).translate(lines[:2], prefixes=["x"])


def repeated_ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return [gram for gram, count in grams.items() if count > 1]


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("decoding", [dict(beam_size=1), dict(beam_size=4), dict(sample=True, seed=1, temperature=0.05)])
def test_no_ngram_repeats_in_any_output(make_model, tokenizers: Tokenizers, corpus, n: int, decoding: dict) -> None:
    vocab = tokenizers.src.vocab_size
    model = make_model(src_vocab=vocab, tgt_vocab=vocab, seed=5, scale=0.3)  # a random model repeats itself a lot
    lines = corpus[0][:20]
    nbest = 1 if decoding.get("beam_size") == 1 else 3
    free = translator(model, tokenizers, **decoding).translate(lines, nbest=nbest)
    assert any(repeated_ngrams(t.tokens, n) for nbest_list in free for t in nbest_list), "the rule has work to do"
    blocked = translator(model, tokenizers, no_repeat_ngram=n, **decoding).translate(lines, nbest=nbest)
    for translations in blocked:
        for translation in translations:
            assert not repeated_ngrams(translation.tokens, n), translation.tokens
            assert math.isfinite(translation.score)


# From the terminal: the same options as flags, on a model trained by `seq2seq train`.

@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory, corpus: tuple[list[str], list[str]]) -> Path:
    folder = tmp_path_factory.mktemp("decoding-cli")
    for name, lines in zip(("train.src", "train.tgt"), corpus):
        (folder / name).write_text("".join(line + "\n" for line in lines))
    for name, lines in zip(("test.src", "test.tgt"), corpus):
        (folder / name).write_text("".join(line + "\n" for line in lines[:8]))
    result = runner.invoke(app, ["train", "--source", str(folder / "train.src"), "--target", str(folder / "train.tgt"),
                                 "--valid-source", str(folder / "test.src"), "--valid-target", str(folder / "test.tgt"),
                                 "--output", str(folder / "run"), "--vocab-size", "60", "--emb-dim", "16",
                                 "--hidden-dim", "32", "--max-steps", "20", "--batch-tokens", "600", "-q",
                                 "--set", "tokenizer.model_type=word"])  # texts encode back to the output's pieces
    assert result.exit_code == 0, result.output
    return folder


def invoke(*args: str):
    return runner.invoke(app, ["translate", *args, "-q"])


def test_score_target_prints_what_translate_scored(cli_run: Path) -> None:
    model, source = str(cli_run / "run" / "best.pt"), str(cli_run / "test.src")
    translated = invoke("-m", model, "-i", source, "--scores")
    assert translated.exit_code == 0, translated.output
    outputs, printed = zip(*(line.rsplit("\t", 1) for line in translated.stdout.splitlines()))
    (cli_run / "hyp.txt").write_text("".join(f"{line}\n" for line in outputs))
    scored = invoke("-m", model, "-i", source, "--score-target", str(cli_run / "hyp.txt"), "--per-token")
    assert scored.exit_code == 0, scored.output
    for line, expected in zip(scored.stdout.splitlines(), printed):
        total, per_token = line.split(" ||| ")
        assert float(total) == pytest.approx(float(expected), abs=2e-4)
        assert sum(map(float, per_token.split())) == pytest.approx(float(total), abs=1e-3)


def test_an_ensemble_of_a_model_with_itself_translates_as_the_model(cli_run: Path) -> None:
    model, source = str(cli_run / "run" / "best.pt"), str(cli_run / "test.src")
    alone = invoke("-m", model, "-i", source, "--nbest", "2")
    twice = invoke("-m", model, "-m", str(cli_run / "run" / "last.pt"), "--weights", "1,3", "-i", source, "--nbest", "2")
    assert alone.exit_code == twice.exit_code == 0, twice.output
    assert [line.rsplit(" ||| ", 1)[0] for line in twice.stdout.splitlines()] == \
        [line.rsplit(" ||| ", 1)[0] for line in alone.stdout.splitlines()]


@pytest.mark.parametrize("args, message", [
    (["--weights", "1"], "--weights gives 1 weights for 2 models"),
    (["--weights", "a,b"], "--weights must be numbers separated by commas"),
    (["--sample", "--top-p", "1.5"], "search.top_p must be above 0.0 and at most 1.0, got 1.5"),
    (["--temperature", "0"], "search.temperature must be above 0.0, got 0.0"),
    (["--score-target", "x.txt", "--sample"], "--sample shapes new translations; --score-target scores the given ones"),
    (["--per-token"], "--per-token goes with --score-target FILE"),
])
def test_bad_decoding_flags_are_one_line_and_exit_2(cli_run: Path, args: list[str], message: str) -> None:
    model = str(cli_run / "run" / "best.pt")
    result = invoke("-m", model, "-m", model, "-i", str(cli_run / "test.src"), *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {message}") and result.output.count("\n") == 1, result.output


def test_a_prefix_file_of_another_length_names_both_files(cli_run: Path) -> None:
    (cli_run / "prefixes.txt").write_text("the\n")
    result = invoke("-m", str(cli_run / "run" / "best.pt"), "-i", str(cli_run / "test.src"),
                    "--prefix", str(cli_run / "prefixes.txt"))
    assert result.exit_code == 1, result.output
    assert result.output.strip() == "error: prefixes has 1 lines but input lines has more: they must pair line by line"


def test_samples_from_the_terminal_are_reproducible(cli_run: Path) -> None:
    args = ["-m", str(cli_run / "run" / "best.pt"), "-i", str(cli_run / "test.src"), "--sample", "--nbest", "3",
            "--seed", "4", "--top-k", "10", "--no-repeat-ngram", "2"]
    first, second = invoke(*args), invoke(*args)
    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout
    assert len(first.stdout.splitlines()) == 3 * 8
