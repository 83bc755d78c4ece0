"""Greedy and beam search over any `step(tokens, state) -> (log_probs, state)` function.

The search knows nothing about the model: `state` is any tuple of tensors whose dim 0 is the row
(sentence, or sentence x beam), and it is reordered by `index_select` when beams are pruned. All
beams of all sentences advance together as one tensor step; finished sentences stay in the batch
(no shrinking), which keeps the loop short.

Scores are the model's log-probability of the whole hypothesis, EOS included. Ranking may divide
them by a length penalty (GNMT, `alpha`) or by the length; the reported score never is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import torch

State = TypeVar("State", bound=tuple)
StepFn = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]


class Hypothesis(NamedTuple):
    tokens: list[int]   # without BOS and EOS
    score: float        # log-probability of tokens + EOS under the model


def _same_kind(state: State, tensors: list[torch.Tensor]) -> State:
    """A state of the same type: a NamedTuple takes its fields as arguments, a plain tuple one iterable."""
    return type(state)(*tensors) if hasattr(state, "_fields") else type(state)(tensors)


def reorder(state: State, index: torch.Tensor) -> State:
    """Pick rows of every tensor in the state; works for any NamedTuple or tuple of tensors."""
    return _same_kind(state, [tensor.index_select(0, index) for tensor in state])


def repeat_rows(state: State, times: int) -> State:
    """Each row repeated `times` times in place (row i -> rows i*times ... i*times+times-1)."""
    return _same_kind(state, [tensor.repeat_interleave(times, dim=0) for tensor in state])


def ranking_score(scores: torch.Tensor, lengths: torch.Tensor, *, alpha: float, length_norm: bool) -> torch.Tensor:
    """The value hypotheses are ranked by: the log-probability, optionally length-normalised."""
    if length_norm:
        return scores / lengths.clamp(min=1)
    if alpha:
        return scores / ((5.0 + lengths) / 6.0) ** alpha  # GNMT length penalty
    return scores


def _constrain_(
    log_probs: torch.Tensor, step: int, *, max_lens: torch.Tensor, min_length: int, eos_id: int,
    finished: torch.Tensor, banned: Sequence[int],
) -> None:
    """Apply the search's rules to one step's log-probabilities (rows, vocab), in place.

    Banned tokens are never proposed; before `min_length` EOS is barred; at a row's maximum length
    only EOS is allowed (at its real log-probability, so scores stay the model's); a finished row's
    only continuation is EOS at no cost, so its score and length no longer change. Each rule
    touches only the columns or rows it concerns.
    """
    if banned:
        log_probs[:, list(banned)] = float("-inf")
    if step < min_length:
        log_probs[:, eos_id] = float("-inf")
    at_limit = step + 1 >= max_lens
    if at_limit.any():
        eos_scores = log_probs[at_limit, eos_id]
        log_probs[at_limit] = float("-inf")
        log_probs[at_limit, eos_id] = eos_scores
    if finished.any():
        log_probs[finished] = float("-inf")
        log_probs[finished, eos_id] = 0.0


def greedy_search(
    step: StepFn, state: State, *, batch_size: int, bos_id: int, eos_id: int, max_lens: torch.Tensor,
    min_length: int = 0, banned: Sequence[int] = (),
) -> list[Hypothesis]:
    """The most probable token at every step; one Hypothesis per sentence."""
    device = max_lens.device
    tokens = torch.full((batch_size,), bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(batch_size, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    history = []
    for t in range(int(max_lens.max())):
        log_probs, state = step(tokens, state)
        _constrain_(log_probs, t, max_lens=max_lens, min_length=min_length, eos_id=eos_id, finished=finished, banned=banned)
        best, tokens = log_probs.max(dim=-1)
        scores += best
        history.append(tokens)
        finished |= tokens == eos_id
        if finished.all():
            break
    columns = torch.stack(history, dim=1).tolist()
    return [Hypothesis(_until_eos(row, eos_id), float(score)) for row, score in zip(columns, scores)]


def beam_search(
    step: StepFn, state: State, *, batch_size: int, beam_size: int, bos_id: int, eos_id: int, max_lens: torch.Tensor,
    min_length: int = 0, alpha: float = 0.0, length_norm: bool = False, nbest: int = 1, banned: Sequence[int] = (),
) -> list[list[Hypothesis]]:
    """The `nbest` best hypotheses per sentence, best first, found with `beam_size` beams.

    `state` holds one row per sentence; it is expanded to beam_size rows each. A finished beam
    keeps its score and is carried unchanged (its only continuation is itself), so an EOS is never
    dropped and a finished hypothesis competes with the open ones. A sentence is done once its
    `nbest` best-ranked beams have all finished (as in OpenNMT-py): without a length penalty no
    open beam can overtake them any more, since extending a hypothesis only lowers its score.
    """
    assert 1 <= nbest <= beam_size, (nbest, beam_size)
    device = max_lens.device
    rows = batch_size * beam_size
    state = repeat_rows(state, beam_size)
    max_lens = max_lens.repeat_interleave(beam_size)
    tokens = torch.full((rows,), bos_id, dtype=torch.long, device=device)
    scores = torch.full((batch_size, beam_size), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start equal: expand only the first, or they would duplicate
    lengths = torch.zeros(batch_size, beam_size, device=device)
    finished = torch.zeros(batch_size, beam_size, dtype=torch.bool, device=device)
    history = torch.empty(rows, 0, dtype=torch.long, device=device)
    row_base = (torch.arange(batch_size, device=device) * beam_size).unsqueeze(1)  # (batch, 1)
    for t in range(int(max_lens.max())):
        log_probs, state = step(tokens, state)
        _constrain_(log_probs, t, max_lens=max_lens, min_length=min_length, eos_id=eos_id,
                    finished=finished.view(-1), banned=banned)
        vocab = log_probs.size(-1)
        candidates = scores.unsqueeze(-1) + log_probs.view(batch_size, beam_size, vocab)  # (batch, beam, vocab)
        grown = (lengths + ~finished).unsqueeze(-1)                                        # (batch, beam, 1)
        rank = ranking_score(candidates, grown, alpha=alpha, length_norm=length_norm)
        _, flat = rank.view(batch_size, -1).topk(beam_size, dim=-1)  # (batch, beam), best ranked first
        beam, tokens = flat // vocab, flat % vocab
        scores = candidates.view(batch_size, -1).gather(1, flat)
        lengths = grown.squeeze(-1).gather(1, beam)
        # A beam with no finite score (fewer live candidates than beams) is dead: freeze it too.
        finished = finished.gather(1, beam) | (tokens == eos_id) | scores.isneginf()
        finished |= finished[:, :nbest].all(dim=1, keepdim=True)  # a done sentence freezes all its beams
        source_rows = (row_base + beam).view(-1)
        state = reorder(state, source_rows)
        history = torch.cat([history[source_rows], tokens.view(-1, 1)], dim=1)
        tokens = tokens.view(-1)
        if finished.all():
            break
    rank = ranking_score(scores, lengths, alpha=alpha, length_norm=length_norm)
    order = rank.argsort(dim=-1, descending=True)
    history = history.view(batch_size, beam_size, -1).tolist()
    results = []
    for sentence, beams in enumerate(order.tolist()):
        kept = [b for b in beams if scores[sentence, b] > float("-inf")][:nbest]
        results.append([Hypothesis(_until_eos(history[sentence][b], eos_id), float(scores[sentence, b])) for b in kept])
    return results


def _until_eos(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens
