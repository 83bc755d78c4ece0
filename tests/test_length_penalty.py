"""GNMT's length penalty, against numbers worked out by hand.

A hypothesis of log-probability s and length n is ranked by s / ((5 + n) / 6) ** alpha (Wu et al. 2016,
Google's NMT system). In beam search the length n counts the output pieces plus the EOS that ends them:
"a b EOS" has length 3. An off-by-one in the penalty or in what the length counts (5 + n + 1, or n without
the EOS) changes which hypothesis wins below.
"""

from __future__ import annotations

import pytest
import torch

from seq2seq.search import Hypothesis, beam_search, ranking_score
from seq2seq.tokenizer import BOS_ID, EOS_ID

A, B, C = 4, 5, 6  # word ids; pad 0, unk 1, bos 2, eos 3
VOCAB = 7


@pytest.mark.parametrize(
    ("score", "length", "alpha", "expected"),
    [
        (-2.0, 1, 1.0, -2.0),   # (5 + 1) / 6 = 1: a one-token hypothesis is not penalised
        (-3.0, 7, 1.0, -1.5),   # (5 + 7) / 6 = 2
        (-3.0, 19, 0.5, -1.5),  # ((5 + 19) / 6) ** 0.5 = 4 ** 0.5 = 2
        (-4.5, 4, 2.0, -2.0),   # ((5 + 4) / 6) ** 2 = 1.5 ** 2 = 2.25
        (-8.0, 7, 3.0, -1.0),   # ((5 + 7) / 6) ** 3 = 2 ** 3 = 8
        (-3.0, 7, 0.0, -3.0),   # alpha 0: no penalty
    ],
)
def test_the_gnmt_penalty_divides_by_five_plus_the_length_over_six_to_the_alpha(
    score: float, length: int, alpha: float, expected: float,
) -> None:
    ranked = ranking_score(torch.tensor([score]), torch.tensor([float(length)]), alpha=alpha, length_norm=False)
    assert ranked.item() == pytest.approx(expected, abs=1e-6)


# Log-probabilities of the next token after each prefix (prefixes without BOS); only the listed continuations
# exist. Three hypotheses, whose costs come at their end, so the beam holds all three until they finish:
#   short  a EOS        -2 - 5          = -7     length 2   ranked -7    / (7/6) = -6
#   middle b b EOS      -2 + 0 - 5.95   = -7.95  length 3   ranked -7.95 / (8/6) = -5.9625   <- the best
#   long   c c c EOS    -2 + 0 + 0 - 7  = -9     length 4   ranked -9    / (9/6) = -6
# With (6 + n) / 6, the length one too long: -7/(8/6) = -5.25, -7.95/(9/6) = -5.3, -9/(10/6) = -5.4: short wins.
# With (4 + n) / 6, the EOS not counted:     -7/(6/6) = -7,    -7.95/(7/6) = -6.81, -9/(8/6) = -6.75: long wins.
# At step 1 the open "b b" and "c c" (-2) rank above the finished "a EOS", and at step 2 the open "c c c" (-2)
# above both finished ones, so the search does not stop before the long one is done.
THREE_LENGTHS = {
    (): {A: -2.0, B: -2.0, C: -2.0},
    (A,): {EOS_ID: -5.0},
    (B,): {B: 0.0},
    (B, B): {EOS_ID: -5.95},
    (C,): {C: 0.0},
    (C, C): {C: 0.0},
    (C, C, C): {EOS_ID: -7.0},
}


def table_step(tokens: torch.Tensor, state: tuple[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
    """THREE_LENGTHS as a step function; the state is each row's prefix, BOS first. A prefix not in the table
    (one that has ended) continues with EOS for sure."""
    prefixes = torch.cat([state[0], tokens.unsqueeze(1)], dim=1)
    log_probs = torch.full((len(prefixes), VOCAB), float("-inf"))
    for row, prefix in enumerate(prefixes.tolist()):
        for token, log_prob in THREE_LENGTHS.get(tuple(prefix[1:]), {EOS_ID: 0.0}).items():
            log_probs[row, token] = log_prob
    return log_probs, (prefixes,)


def best(alpha: float) -> list[Hypothesis]:
    (found,) = beam_search(table_step, (torch.empty(1, 0, dtype=torch.long),), batch_size=1, beam_size=3,
                           bos_id=BOS_ID, eos_id=EOS_ID, max_lens=torch.tensor([6]), alpha=alpha)
    return found


def test_beam_search_ranks_by_the_penalty_of_the_pieces_plus_eos() -> None:
    assert best(alpha=1.0) == [Hypothesis([B, B], pytest.approx(-7.95, abs=1e-6))]


def test_without_the_penalty_the_most_probable_of_the_three_wins() -> None:
    """The short hypothesis is the most probable: the middle one wins above by the penalty alone."""
    assert best(alpha=0.0) == [Hypothesis([A], pytest.approx(-7.0, abs=1e-6))]
