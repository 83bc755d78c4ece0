"""Greedy and beam search: specified on hand-written step tables and checked against brute force.

A search depends only on `step(tokens, state) -> (log_probs, state)`, so most tests here drive it
with a table of next-token distributions keyed by the prefix, where the right answer can be worked
out by hand; the rest run a tiny random model and recompute every score by teacher forcing.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F

from seq2seq.config import ModelConfig, SearchConfig
from seq2seq.data import pad
from seq2seq.model import Seq2Seq
from seq2seq.search import Hypothesis, beam_search, greedy_search, reorder, repeat_rows
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizers
from seq2seq.translation import Translation, search_batch, translate

A, B = 4, 5          # the two word ids of the table vocabulary: pad 0, unk 1, bos 2, eos 3, a 4, b 5
TABLE_VOCAB = 6


def table_step(table: dict[tuple[int, ...], dict[int, float]]):
    """A step function reading next-token probabilities from `table[prefix]` (prefix without BOS).

    The state is the prefix itself, one row per hypothesis, so the search's reordering is exercised.
    A prefix missing from the table (any that already ended) continues with EOS for sure.
    """

    def step(tokens: torch.Tensor, state: tuple[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
        prefixes = torch.cat([state[0], tokens.unsqueeze(1)], dim=1)  # (rows, t + 1), BOS first
        log_probs = torch.full((len(prefixes), TABLE_VOCAB), float("-inf"))
        for row, prefix in enumerate(prefixes.tolist()):
            for token, p in table.get(tuple(prefix[1:]), {EOS_ID: 1.0}).items():
                log_probs[row, token] = math.log(p)
        return log_probs, (prefixes,)

    return step


def start_state(batch_size: int) -> tuple[torch.Tensor]:
    return (torch.empty(batch_size, 0, dtype=torch.long),)


def run_beam(table, *, beam_size: int, max_len: int = 6, **options) -> list[Hypothesis]:
    (found,) = beam_search(table_step(table), start_state(1), batch_size=1, beam_size=beam_size, bos_id=BOS_ID,
                           eos_id=EOS_ID, max_lens=torch.tensor([max_len]), **options)
    return found


def run_greedy(table, *, max_len: int = 6, **options) -> Hypothesis:
    (found,) = greedy_search(table_step(table), start_state(1), batch_size=1, bos_id=BOS_ID, eos_id=EOS_ID,
                             max_lens=torch.tensor([max_len]), **options)
    return found


# Greedy takes `a` (0.6 > 0.4) and then can only end at 0.6 * 0.5 = 0.30.
# The better sequence starts with the less likely `b`: b a EOS = 0.4 * 0.9 * 1.0 = 0.36.
# Beam 2 after step 1 holds {a: 0.6, b: 0.4}; step 2 candidates: b a 0.36, a EOS 0.30, a a 0.18,
# a b 0.12, b EOS 0.04 -> keeps {b a, a EOS}; step 3 ends b a with EOS (1.0) -> b a EOS 0.36 wins.
GREEDY_IS_WRONG = {
    (): {A: 0.6, B: 0.4},
    (A,): {EOS_ID: 0.5, A: 0.3, B: 0.2},
    (B,): {A: 0.9, EOS_ID: 0.1},
    (B, A): {EOS_ID: 1.0},
}

# Short: a EOS = 0.55 * 0.6 = 0.33 (log -1.109, length 2 with the EOS).
# Long:  b b b EOS = 0.45 * 0.86^3 = 0.2862 (log -1.251, length 4).
# Raw log-probability prefers the short one; the GNMT penalty ((5 + len) / 6) ** alpha with alpha 1
# divides by 7/6 and 9/6: -0.950 vs -0.834, so it prefers the long one; so does dividing by the
# length (-0.555 vs -0.313). Beam 2 keeps both all along (worked out step by step, the runner-up of
# every step scores far lower: a a 0.22, b EOS 0.063, b b EOS 0.054, b b b b 0.047).
SHORT_OR_LONG = {
    (): {A: 0.55, B: 0.45},
    (A,): {EOS_ID: 0.6, A: 0.4},
    (B,): {B: 0.86, EOS_ID: 0.14},
    (B, B): {B: 0.86, EOS_ID: 0.14},
    (B, B, B): {EOS_ID: 0.86, B: 0.14},
}


def test_greedy_follows_the_most_probable_token() -> None:
    assert run_greedy(GREEDY_IS_WRONG) == Hypothesis([A], pytest.approx(math.log(0.30), abs=1e-6))


def test_beam_finds_the_better_sequence_that_greedy_misses() -> None:
    best = run_beam(GREEDY_IS_WRONG, beam_size=2)[0]

    assert best.tokens == [B, A]
    assert best.score == pytest.approx(math.log(0.4) + math.log(0.9) + math.log(1.0), abs=1e-6)


def test_beam_nbest_lists_the_runner_up_with_its_exact_score() -> None:
    found = run_beam(GREEDY_IS_WRONG, beam_size=2, nbest=2)
    assert [hyp.tokens for hyp in found] == [[B, A], [A]]
    assert [hyp.score for hyp in found] == pytest.approx([math.log(0.36), math.log(0.30)], abs=1e-6)


def test_a_beam_of_one_on_the_table_is_greedy() -> None:
    assert run_beam(GREEDY_IS_WRONG, beam_size=1) == [run_greedy(GREEDY_IS_WRONG)]


def test_without_length_penalty_the_most_probable_sequence_wins() -> None:
    best = run_beam(SHORT_OR_LONG, beam_size=2, alpha=0.0)[0]
    assert best == Hypothesis([A], pytest.approx(math.log(0.33), abs=1e-6))


@pytest.mark.parametrize("options", [{"alpha": 1.0}, {"length_norm": True}], ids=["gnmt-alpha-1", "length-norm"])
def test_a_length_penalty_ranks_by_normalised_score_but_reports_the_log_probability(options: dict) -> None:
    found = run_beam(SHORT_OR_LONG, beam_size=2, nbest=2, **options)

    assert [hyp.tokens for hyp in found] == [[B, B, B], [A]]
    assert [hyp.score for hyp in found] == pytest.approx([math.log(0.45 * 0.86**3), math.log(0.33)], abs=1e-6)


def test_min_length_bars_an_early_eos_on_the_table() -> None:
    # with EOS barred at steps 0 and 1, "a EOS" is impossible: b b b EOS (0.2862) beats a a EOS (0.55 * 0.4 * 1.0 = 0.22)
    found = run_beam(SHORT_OR_LONG, beam_size=2, min_length=2)[0]
    assert found == Hypothesis([B, B, B], pytest.approx(math.log(0.45 * 0.86**3), abs=1e-6))
    assert run_greedy(SHORT_OR_LONG, min_length=2).tokens == [A, A]


def test_at_the_maximum_length_only_eos_is_allowed_at_its_real_cost() -> None:
    # max_len 2 counts the EOS: b b b EOS is out of reach, b EOS costs 0.45 * 0.14 after all
    found = run_beam(SHORT_OR_LONG, beam_size=2, nbest=2, max_len=2)
    assert [hyp.tokens for hyp in found] == [[A], [B]]
    assert found[1].score == pytest.approx(math.log(0.45 * 0.14), abs=1e-6)


def test_the_first_step_runs_once_per_sentence_and_later_steps_once_per_beam() -> None:
    rows_seen = []
    table = table_step(GREEDY_IS_WRONG)

    def counting_step(tokens: torch.Tensor, state: tuple[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
        rows_seen.append(len(tokens))
        return table(tokens, state)

    (found,) = beam_search(counting_step, start_state(1), batch_size=1, beam_size=2, bos_id=BOS_ID, eos_id=EOS_ID,
                           max_lens=torch.tensor([6]))
    assert found[0].tokens == [B, A]
    assert rows_seen[0] == 1 and len(rows_seen) > 1 and set(rows_seen[1:]) == {2}


def test_states_of_plain_tuples_and_named_tuples_are_reordered_row_by_row() -> None:
    rows = torch.tensor([[0, 0], [1, 1], [2, 2]])
    named = Hypothesis(rows, rows * 10)  # any NamedTuple of tensors

    assert [t.tolist() for t in reorder((rows,), torch.tensor([2, 0]))] == [[[2, 2], [0, 0]]]
    picked = reorder(named, torch.tensor([1, 1]))
    assert type(picked) is Hypothesis and picked.score.tolist() == [[10, 10], [10, 10]]
    repeated = repeat_rows((rows[:2], rows[:2, 0]), 2)
    assert type(repeated) is tuple
    assert [t.tolist() for t in repeated] == [[[0, 0], [0, 0], [1, 1], [1, 1]], [0, 0, 1, 1]]


# ---------------------------------------------------------------------------------------------
# On a tiny random model: every score is recomputed by teacher forcing.


def random_model(*, seed: int = 0, src_vocab: int = 20, tgt_vocab: int = 20, eos_bias: float = 0.0) -> Seq2Seq:
    """A tiny model whose weights are wide enough for clearly peaked distributions."""
    torch.manual_seed(seed)
    model = Seq2Seq(src_vocab, tgt_vocab, ModelConfig(emb_dim=16, hidden_dim=32))
    with torch.no_grad():
        for param in model.parameters():
            param.uniform_(-0.6, 0.6)
        model.out.bias[EOS_ID] += eos_bias
    return model.eval()


def random_sources(count: int, *, seed: int, vocab: int = 20, max_len: int = 12) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4, vocab) for _ in range(rng.randint(1, max_len))] for _ in range(count)]


def teacher_forced_scores(model: Seq2Seq, source: Sequence[int], outputs: Sequence[Sequence[int]]) -> list[float]:
    """log P(output + EOS | source) for each output, computed by `forward` (teacher forcing)."""
    src = torch.tensor([[*source, EOS_ID]] * len(outputs))
    src_lens = torch.full((len(outputs),), len(source) + 1)
    tgt_in, _ = pad([[BOS_ID, *out] for out in outputs])
    tgt_out, lens = pad([[*out, EOS_ID] for out in outputs])
    with torch.no_grad():
        log_probs = F.log_softmax(model(src, src_lens, tgt_in).double(), dim=-1)
    picked = log_probs.gather(2, tgt_out.unsqueeze(-1)).squeeze(-1)  # (n, len)
    keep = torch.arange(tgt_out.size(1)) < lens.unsqueeze(1)
    return picked.masked_fill(~keep, 0.0).sum(1).tolist()


def search_config(**settings) -> SearchConfig:
    return SearchConfig(**{"length_penalty": 0.0, **settings})


def test_beam_of_one_equals_greedy_token_for_token() -> None:
    model = random_model(seed=1)
    sources = random_sources(16, seed=1)

    config = search_config(beam_size=1)
    greedy = search_batch(model, sources, config)
    with torch.no_grad():
        src, src_lens = pad([[*s, EOS_ID] for s in sources])
        memory, state = model.encode(src, src_lens)
        max_lens = (src_lens * config.max_length_ratio + config.max_length_constant).long()
        beam = beam_search(lambda tokens, st: model.decode_step(tokens, st, memory), state, batch_size=len(sources),
                           beam_size=1, bos_id=BOS_ID, eos_id=EOS_ID, max_lens=max_lens, banned=(PAD_ID, BOS_ID))

    assert [g[0].tokens for g in greedy] == [b[0].tokens for b in beam]
    assert [g[0].score for g in greedy] == pytest.approx([b[0].score for b in beam], abs=1e-5)
    assert len({len(g[0].tokens) for g in greedy}) > 1, "the sentences end at different steps"


@pytest.mark.parametrize("nbest", [1, 3])
def test_done_sentences_leaving_the_batch_changes_no_result(nbest: int) -> None:
    """With `narrow`, done sentences leave the batch; every hypothesis and score stays as without it."""
    model = random_model(seed=4)
    sources = random_sources(24, seed=4)
    narrowed = []
    with torch.no_grad():
        src, src_lens = pad([[*s, EOS_ID] for s in sources])
        memory, state = model.encode(src, src_lens)  # one memory row per sentence, shared by its beams
        max_lens = (src_lens * 2 + 10).long()

        def step_for(memory):
            return lambda tokens, st: model.decode_step(tokens, st, memory)

        def narrow(sentences):
            narrowed.append(len(sentences))
            return step_for(reorder(memory, sentences))

        settings = dict(batch_size=len(sources), beam_size=4, bos_id=BOS_ID, eos_id=EOS_ID, max_lens=max_lens,
                        alpha=1.0, nbest=nbest, banned=(PAD_ID, BOS_ID))
        whole = beam_search(step_for(memory), state, **settings)
        shrinking = beam_search(step_for(memory), state, **settings, narrow=narrow)

    assert narrowed and narrowed == sorted(narrowed, reverse=True) and narrowed[-1] < len(sources)
    assert [[h.tokens for h in hyps] for hyps in shrinking] == [[h.tokens for h in hyps] for hyps in whole]
    assert [h.score for hyps in shrinking for h in hyps] == pytest.approx([h.score for hyps in whole for h in hyps], abs=1e-5)
    assert all(len(hyps) == nbest for hyps in whole)


def test_finished_sentences_leaving_a_greedy_batch_changes_no_result() -> None:
    model = random_model(seed=5)
    sources = random_sources(24, seed=5)
    with torch.no_grad():
        src, src_lens = pad([[*s, EOS_ID] for s in sources])
        memory, state = model.encode(src, src_lens)
        settings = dict(batch_size=len(sources), bos_id=BOS_ID, eos_id=EOS_ID, max_lens=(src_lens * 2 + 10).long(),
                        banned=(PAD_ID, BOS_ID))
        whole = greedy_search(lambda tokens, st: model.decode_step(tokens, st, memory), state, **settings)
        shrinking = greedy_search(lambda tokens, st: model.decode_step(tokens, st, memory), state, **settings,
                                  narrow=lambda sentences: lambda tokens, st: model.decode_step(tokens, st, reorder(memory, sentences)))

    assert [h.tokens for h in shrinking] == [h.tokens for h in whole]
    assert [h.score for h in shrinking] == pytest.approx([h.score for h in whole], abs=1e-5)
    assert len({len(h.tokens) for h in whole}) > 1, "the sentences end at different steps"


def test_a_wide_beam_finds_the_best_sequence_of_brute_force_enumeration() -> None:
    # 6 target ids (pad, unk, bos, eos and two words); translation never emits pad or bos, and EOS
    # ends a sequence. Max length 4 counts the EOS: every sequence of 0-3 ids from {unk, w1, w2} then
    # EOS, 1 + 3 + 9 + 27 = 40 of them. A beam of 160 never prunes any, so beam search is exact here.
    model = random_model(seed=2, src_vocab=8, tgt_vocab=6)
    source = [4, 7, 5]
    non_eos = [i for i in range(6) if i not in (EOS_ID, PAD_ID, BOS_ID)]
    every = [list(seq) for n in range(4) for seq in itertools.product(non_eos, repeat=n)]
    scores = teacher_forced_scores(model, source, every)
    ranked = sorted(zip(scores, every), reverse=True)
    assert ranked[0][0] - ranked[1][0] > 1e-3, "the best sequence must be clearly best for the test to be meaningful"

    exhaustive = search_config(beam_size=160, max_length_ratio=0.0, max_length_constant=4)
    (found,) = search_batch(model, [source], exhaustive, nbest=10)

    assert found[0].tokens == ranked[0][1]
    assert found[0].score == pytest.approx(ranked[0][0], abs=1e-4)
    # exact search: the whole top ten agrees with the enumeration
    assert [hyp.tokens for hyp in found] == [seq for _, seq in ranked[:10]]


def test_a_hypothesis_score_is_its_teacher_forced_log_probability() -> None:
    model = random_model(seed=3)
    sources = random_sources(6, seed=3)

    found = search_batch(model, sources, search_config(beam_size=5, length_penalty=1.0), nbest=5)

    for source, hypotheses in zip(sources, found):
        expected = teacher_forced_scores(model, source, [hyp.tokens for hyp in hypotheses])
        assert [hyp.score for hyp in hypotheses] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("beam_size", [1, 5])
def test_a_sentence_alone_and_in_a_batch_of_64_gets_the_same_translation(beam_size: int) -> None:
    model = random_model(seed=4)  # outputs of varied lengths (1 to 51): sentences finish at different steps
    sentence = [7, 12, 9, 4, 15]
    others = random_sources(63, seed=4, max_len=20)
    batch = others[:30] + [sentence] + others[30:]
    config = search_config(beam_size=beam_size, length_penalty=1.0)

    in_batch = search_batch(model, batch, config)
    alone = search_batch(model, [sentence], config)[0]

    assert in_batch[30][0].tokens == alone[0].tokens
    assert in_batch[30][0].score == pytest.approx(alone[0].score, abs=1e-4)
    for index in (0, 17, 62):  # a few of the others, too
        assert in_batch[index][0].tokens == search_batch(model, [batch[index]], config)[0][0].tokens
    assert len({len(hyps[0].tokens) for hyps in in_batch}) > 3, "outputs of many lengths"


def test_nbest_gives_distinct_hypotheses_in_descending_normalised_score() -> None:
    alpha = 1.0
    model = random_model(seed=5)
    found = search_batch(model, random_sources(8, seed=5), search_config(beam_size=5, length_penalty=alpha), nbest=5)

    def normalised(hyp: Hypothesis) -> float:
        return hyp.score / ((5.0 + len(hyp.tokens) + 1) / 6.0) ** alpha  # the length counts the EOS

    for hypotheses in found:
        assert len(hypotheses) == 5
        assert len({tuple(hyp.tokens) for hyp in hypotheses}) == 5
        ranking = [normalised(hyp) for hyp in hypotheses]
        assert ranking == sorted(ranking, reverse=True)


def test_nbest_without_length_penalty_is_in_descending_log_probability() -> None:
    model = random_model(seed=6)
    for hypotheses in search_batch(model, random_sources(8, seed=6), search_config(beam_size=5), nbest=5):
        scores = [hyp.score for hyp in hypotheses]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("beam_size", [1, 5])
def test_no_hypothesis_is_shorter_than_min_length(beam_size: int) -> None:
    model = random_model(seed=7, eos_bias=6.0)  # left alone, this model ends almost at once
    sources = random_sources(10, seed=7)
    nbest = min(beam_size, 3)

    free = search_batch(model, sources, search_config(beam_size=beam_size), nbest=nbest)
    assert min(len(hyp.tokens) for hyps in free for hyp in hyps) < 4, "without min_length some are short"

    bound = search_batch(model, sources, search_config(beam_size=beam_size, min_length=4), nbest=nbest)
    assert all(len(hyp.tokens) >= 4 for hyps in bound for hyp in hyps)


@pytest.mark.parametrize("beam_size", [1, 5])
def test_every_sentence_stops_at_its_own_maximum_length(beam_size: int) -> None:
    model = random_model(seed=8, eos_bias=-30.0)  # never ends on its own: every hypothesis runs to the limit
    sources = random_sources(10, seed=8)
    ratio, constant = 1.5, 2
    nbest = min(beam_size, 3)

    found = search_batch(model, sources, search_config(beam_size=beam_size, max_length_ratio=ratio,
                                                       max_length_constant=constant), nbest=nbest)

    for source, hypotheses in zip(sources, found):
        max_len = int(ratio * (len(source) + 1) + constant)  # source length with its EOS; the limit counts the EOS
        assert [len(hyp.tokens) for hyp in hypotheses] == [max_len - 1] * nbest
        # the forced EOS is paid at its real (tiny) probability: scores stay the model's
        expected = teacher_forced_scores(model, source, [hyp.tokens for hyp in hypotheses])
        assert [hyp.score for hyp in hypotheses] == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_a_finished_hypothesis_ends_once(beam_size: int) -> None:
    model = random_model(seed=4, eos_bias=0.5)
    found = search_batch(model, random_sources(20, seed=9), search_config(beam_size=beam_size), nbest=beam_size)
    hypotheses = [hyp for hyps in found for hyp in hyps]
    assert all(EOS_ID not in hyp.tokens for hyp in hypotheses)
    assert any(hyp.tokens for hyp in hypotheses)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_translate_keeps_the_input_order_and_gives_empty_lines_empty_output(
    tokenizers: Tokenizers, corpus: tuple[list[str], list[str]], beam_size: int,
) -> None:
    vocab = tokenizers.src.vocab_size
    model = random_model(seed=10, src_vocab=vocab, tgt_vocab=vocab)
    lines = corpus[0][:9] + [""] + corpus[0][9:20]
    search = search_config(beam_size=beam_size, batch_size=4)  # several batches, sorted by length inside

    together = list(translate(model, tokenizers, lines, search))
    one_by_one = [next(translate(model, tokenizers, [line], search)) for line in lines]

    assert [[t.tokens for t in nbest] for nbest in together] == [[t.tokens for t in nbest] for nbest in one_by_one]
    assert together[9] == [Translation("", 0.0, [])]
    assert len({tuple(nbest[0].tokens) for nbest in together}) > 5, "outputs differ, so a mix-up would show"
    assert [nbest[0].text for nbest in together] == tokenizers.tgt.decode([nbest[0].tokens for nbest in together])


def test_beam_stops_once_the_best_hypothesis_has_finished() -> None:
    # Step 0: EOS 0.6, token 4 0.4; after token 4 the model says "4" forever and never EOS. The
    # finished empty hypothesis (log 0.6) beats every extension of "4" (at most log 0.4), so the
    # search is exact after one step and must not run on to the length limit.
    calls = []

    def step(tokens: torch.Tensor, state: tuple[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
        calls.append(len(tokens))
        log_probs = torch.full((len(tokens), TABLE_VOCAB), float("-inf"))
        log_probs[:, 4] = 0.0
        if len(calls) == 1:
            log_probs[:, EOS_ID], log_probs[:, 4] = math.log(0.6), math.log(0.4)
        return log_probs, state

    (found,) = beam_search(step, (torch.zeros(1, 1),), batch_size=1, beam_size=2, bos_id=BOS_ID, eos_id=EOS_ID,
                           max_lens=torch.tensor([50]))
    assert found == [Hypothesis([], pytest.approx(math.log(0.6)))]
    assert len(calls) == 1
