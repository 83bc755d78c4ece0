"""Greedy and beam search over any `step(tokens, state) -> (log_probs, state)` function.

The search knows nothing about the model: `state` is any tuple of tensors whose dim 0 is the row
(sentence, or sentence x beam), and it is reordered by `index_select` when beams are pruned. All
beams of all sentences advance together as one tensor step. Whatever the step closes over (the
encoder's memory, one row per sentence) cannot be reordered by the search; given a `narrow` function
that makes the step for fewer sentences, both searches let done sentences leave the batch.

Scores are the model's log-probability of the whole hypothesis, EOS included. Ranking may divide
them by a length penalty (GNMT, `alpha`) or by the length; the reported score never is. Every
search obeys the same rules (`_constrain_`): a length limit, barred pieces, a forced prefix per
sentence, and optionally no repeated n-gram. `greedy_search` takes the most probable piece at every
step, or, given a `Sampler`, draws it from the model's distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import torch

State = TypeVar("State", bound=tuple)
StepFn = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]
Narrow = Callable[[torch.Tensor], StepFn]  # the step for some of the batch's sentences (a long tensor of their numbers)
TopK = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]  # `torch_top_k`, or a faster equivalent
Choose = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]  # (log-probs, step, sentences) -> one piece per row
OnStep = Callable[[int, int], None]  # (steps done, the most steps the search can take): progress within a batch


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
    finished: torch.Tensor, banned: Sequence[int], forced: torch.Tensor | None = None,
    history: torch.Tensor | None = None, no_repeat_ngram: int = 0,
) -> None:
    """Apply the search's rules to one step's log-probabilities (rows, vocab), in place.

    Banned tokens are never proposed; with `no_repeat_ngram`, nor is a piece that would repeat an
    n-gram of the row's `history` (rows, step); before `min_length` EOS is barred. A row whose
    `forced` prefix (rows, P; -1 past its end) is not yet written may only take the prefix's next
    piece, at its real log-probability. At a row's maximum length only EOS is allowed (at its real
    log-probability, so scores stay the model's); a finished row's only continuation is EOS at no
    cost, so its score and length no longer change. Each rule touches only the columns or rows it concerns.
    """
    prefix = _prefix_rows(forced, step)
    if prefix is not None:
        prefix_rows, prefix_tokens = prefix
        prefix_scores = log_probs[prefix_rows, prefix_tokens]
    if banned:
        log_probs[:, list(banned)] = float("-inf")
    if no_repeat_ngram and history is not None:
        _block_repeats_(log_probs, history, no_repeat_ngram)
    if step < min_length:
        log_probs[:, eos_id] = float("-inf")
    if prefix is not None:
        log_probs.index_fill_(0, prefix_rows, float("-inf"))
        log_probs[prefix_rows, prefix_tokens] = prefix_scores
    # Rows by number: assigning through a boolean row mask scanned the whole table (2 ms for 320 rows of 8,000).
    at_limit = step + 1 >= max_lens
    if at_limit.any():
        rows = at_limit.nonzero().squeeze(1)
        eos_scores = log_probs[rows, eos_id]
        log_probs.index_fill_(0, rows, float("-inf"))
        log_probs[rows, eos_id] = eos_scores
    if finished.any():
        rows = finished.nonzero().squeeze(1)
        log_probs.index_fill_(0, rows, float("-inf"))
        log_probs[rows, eos_id] = 0.0


def _prefix_rows(forced: torch.Tensor | None, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The rows still writing their forced prefix at `step`, and the piece each must write; None if none."""
    if forced is None or step >= forced.size(1):
        return None
    tokens = forced[:, step]
    rows = (tokens >= 0).nonzero().squeeze(1)
    return (rows, tokens[rows]) if len(rows) else None


def _block_repeats_(log_probs: torch.Tensor, history: torch.Tensor, n: int) -> None:
    """Bar each row's pieces that would complete an n-gram already in its `history` (rows, steps): for every
    earlier n-gram whose first n - 1 pieces equal the row's last n - 1, its last piece."""
    if history.size(1) < n:
        return
    windows = history.unfold(1, n, 1)                       # (rows, steps - n + 1, n): every n-gram so far
    last = history[:, history.size(1) - (n - 1):]           # (rows, n - 1): what the next piece would extend
    repeats = (windows[:, :, :-1] == last.unsqueeze(1)).all(dim=-1)
    rows, starts = repeats.nonzero(as_tuple=True)
    log_probs[rows, windows[rows, starts, -1]] = float("-inf")


class Sampler(NamedTuple):
    """Draws each next piece from the model's distribution, reshaped by `temperature`, `top_k` and `top_p`.

    The random numbers are drawn beforehand, one row per sentence and one column per step
    (`uniforms`), so a sentence's sample depends on its own numbers alone, never on its batch. A
    piece is drawn by inverting the cumulative distribution at the sentence's number for the step.
    """

    uniforms: torch.Tensor  # (sentences, steps), in [0, 1)
    temperature: float = 1.0
    top_k: int = 0          # 0 = every piece
    top_p: float = 1.0      # 1 = every piece

    def __call__(self, log_probs: torch.Tensor, step: int, sentences: torch.Tensor) -> torch.Tensor:
        logits = log_probs / self.temperature
        if self.top_k and self.top_k < logits.size(-1):
            kth_best = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth_best, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            ordered, columns = probs.sort(dim=-1, descending=True)
            outside = ordered.cumsum(dim=-1) - ordered >= self.top_p  # the most probable piece is always kept
            probs = probs.scatter(1, columns, ordered.masked_fill(outside, 0.0))
        cumulative = probs.cumsum(dim=-1)
        drawn = self.uniforms[sentences, step].unsqueeze(1).to(cumulative) * cumulative[:, -1:]
        return torch.searchsorted(cumulative, drawn, right=True).squeeze(1).clamp(max=logits.size(-1) - 1)


def torch_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best scores of each row (rows, width), best first, and their columns."""
    return scores.topk(k, dim=-1)


def greedy_search(
    step: StepFn, state: State, *, batch_size: int, bos_id: int, eos_id: int, max_lens: torch.Tensor,
    min_length: int = 0, banned: Sequence[int] = (), forced: torch.Tensor | None = None, no_repeat_ngram: int = 0,
    narrow: Narrow | None = None, top_k: TopK = torch_top_k, choose: Choose | None = None, on_step: OnStep | None = None,
) -> list[Hypothesis]:
    """The most probable token at every step (or the one `choose` picks: a `Sampler`); one Hypothesis per
    sentence. With `narrow`, as in `beam_search`, finished sentences leave the batch; `on_step`, as there."""
    choose = choose or (lambda log_probs, t, sentences: top_k(log_probs, 1)[1].squeeze(1))
    device = max_lens.device
    live = torch.arange(batch_size, device=device)  # the sentences still searched, by their number in the batch
    tokens = torch.full((batch_size,), bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(batch_size, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    history = torch.empty(batch_size, 0, dtype=torch.long, device=device)
    results: list[Hypothesis] = [Hypothesis([], 0.0)] * batch_size
    steps = int(max_lens.max())
    for t in range(steps):
        if on_step is not None:
            on_step(t, steps)
        log_probs, state = step(tokens, state)
        _constrain_(log_probs, t, max_lens=max_lens, min_length=min_length, eos_id=eos_id, finished=finished, banned=banned,
                    forced=forced, history=history, no_repeat_ngram=no_repeat_ngram)
        tokens = choose(log_probs, t, live)
        scores += log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1)
        history = torch.cat([history, tokens.unsqueeze(1)], dim=1)
        finished |= tokens == eos_id
        if finished.all():
            break
        if narrow is not None and finished.any():
            _collect_greedy(results, live[finished], scores[finished], history[finished], eos_id)
            keep = (~finished).nonzero().squeeze(1)
            live, tokens, scores, finished = live[keep], tokens[keep], scores[keep], finished[keep]
            history, max_lens, state = history[keep], max_lens[keep], reorder(state, keep)
            forced = forced[keep] if forced is not None else None
            step = narrow(live)
    _collect_greedy(results, live, scores, history, eos_id)
    return results


def _collect_greedy(results: list[Hypothesis], sentences: torch.Tensor, scores: torch.Tensor, history: torch.Tensor,
                    eos_id: int) -> None:
    for sentence, score, tokens in zip(sentences.tolist(), scores.tolist(), history.tolist()):
        results[sentence] = Hypothesis(_until_eos(tokens, eos_id), score)


def beam_search(
    step: StepFn, state: State, *, batch_size: int, beam_size: int, bos_id: int, eos_id: int, max_lens: torch.Tensor,
    min_length: int = 0, alpha: float = 0.0, length_norm: bool = False, nbest: int = 1, banned: Sequence[int] = (),
    forced: torch.Tensor | None = None, no_repeat_ngram: int = 0, narrow: Narrow | None = None, top_k: TopK = torch_top_k,
    on_step: OnStep | None = None,
) -> list[list[Hypothesis]]:
    """The `nbest` best hypotheses per sentence, best first, found with `beam_size` beams.

    `state` holds one row per sentence; the first step runs on it as it is (every beam starts there),
    then its result is expanded to beam_size rows each. A finished beam
    keeps its score and is carried unchanged (its only continuation is itself), so an EOS is never
    dropped and a finished hypothesis competes with the open ones. A sentence is done once its
    `nbest` best-ranked beams have all finished (as in OpenNMT-py): without a length penalty no
    open beam can overtake them any more, since extending a hypothesis only lowers its score.

    Given `narrow(sentences)`, which returns the step for some of the batch's sentences (their beams
    are the state's rows, sentence by sentence), done sentences leave the batch, so that later steps
    compute only the sentences still searched; without it, they stay in as frozen rows.
    `top_k` ranks each row's continuations (`seq2seq.speedups` has a faster one for the CPU). `on_step`,
    if given, hears of every step before it is taken (steps done, the most there can be): progress for
    very long lines, whose search can run for minutes.
    """
    assert 1 <= nbest <= beam_size, (nbest, beam_size)
    device = max_lens.device
    max_lens = max_lens.repeat_interleave(beam_size)
    forced = forced.repeat_interleave(beam_size, dim=0) if forced is not None else None
    beam_offsets = torch.arange(beam_size, device=device)
    live = torch.arange(batch_size, device=device)  # the sentences still searched, by their number in the batch
    tokens = torch.full((batch_size,), bos_id, dtype=torch.long, device=device)
    scores = torch.full((batch_size, beam_size), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start equal: expand only the first, or they would duplicate
    lengths = torch.zeros(batch_size, beam_size, device=device)
    finished = torch.zeros(batch_size, beam_size, dtype=torch.bool, device=device)
    history = torch.empty(batch_size * beam_size, 0, dtype=torch.long, device=device)
    results: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
    steps = int(max_lens.max())
    for t in range(steps):
        if on_step is not None:
            on_step(t, steps)
        log_probs, state = step(tokens, state)
        if t == 0:  # a sentence's beams all start from BOS in the same state: one row each made the first step
            log_probs, state = log_probs.repeat_interleave(beam_size, dim=0), repeat_rows(state, beam_size)
        _constrain_(log_probs, t, max_lens=max_lens, min_length=min_length, eos_id=eos_id,
                    finished=finished.view(-1), banned=banned, forced=forced, history=history,
                    no_repeat_ngram=no_repeat_ngram)
        # A beam's continuations all have the same length, so its best k by log-probability are its best k
        # by rank too, and only they can make the cut: rank beam x k candidates, not beam x vocabulary.
        k = min(beam_size, log_probs.size(-1))
        top_log_probs, top_tokens = top_k(log_probs, k)                              # (rows, k)
        candidates = scores.unsqueeze(-1) + top_log_probs.view(len(live), beam_size, k)  # (sentences, beam, k)
        grown = (lengths + ~finished).unsqueeze(-1)                                  # (sentences, beam, 1)
        rank = ranking_score(candidates, grown, alpha=alpha, length_norm=length_norm)
        _, flat = rank.view(len(live), -1).topk(beam_size, dim=-1)  # (sentences, beam), best ranked first
        beam, tokens = flat // k, top_tokens.view(len(live), -1).gather(1, flat)
        scores = candidates.view(len(live), -1).gather(1, flat)
        lengths = grown.squeeze(-1).gather(1, beam)
        # A beam with no finite score (fewer live candidates than beams) is dead: freeze it too.
        finished = finished.gather(1, beam) | (tokens == eos_id) | scores.isneginf()
        finished |= finished[:, :nbest].all(dim=1, keepdim=True)  # a done sentence freezes all its beams
        source_rows = (beam + torch.arange(len(live), device=device).unsqueeze(1) * beam_size).view(-1)
        state = reorder(state, source_rows)
        history = torch.cat([history[source_rows], tokens.view(-1, 1)], dim=1)
        tokens = tokens.view(-1)
        done = finished.all(dim=1)
        if done.all():
            break
        if narrow is not None and done.any():
            _collect_beams(results, live[done], scores[done], lengths[done], history.view(len(live), beam_size, -1)[done],
                           nbest=nbest, eos_id=eos_id, alpha=alpha, length_norm=length_norm)
            keep = (~done).nonzero().squeeze(1)
            rows = (keep.unsqueeze(1) * beam_size + beam_offsets).view(-1)
            live, scores, lengths, finished = live[keep], scores[keep], lengths[keep], finished[keep]
            tokens, history, max_lens, state = tokens[rows], history[rows], max_lens[rows], reorder(state, rows)
            forced = forced[rows] if forced is not None else None
            step = narrow(live)
    _collect_beams(results, live, scores, lengths, history.view(len(live), beam_size, -1), nbest=nbest, eos_id=eos_id,
                   alpha=alpha, length_norm=length_norm)
    return results


def _collect_beams(
    results: list[list[Hypothesis]], sentences: torch.Tensor, scores: torch.Tensor, lengths: torch.Tensor,
    history: torch.Tensor, *, nbest: int, eos_id: int, alpha: float, length_norm: bool,
) -> None:
    """Store the `nbest` best-ranked hypotheses of each of `sentences` (scores, lengths: (n, beam); history: (n, beam, t))."""
    order = ranking_score(scores, lengths, alpha=alpha, length_norm=length_norm).argsort(dim=-1, descending=True)
    for sentence, beams, beam_scores, beam_tokens in zip(sentences.tolist(), order.tolist(), scores.tolist(),
                                                         history.tolist()):
        kept = [b for b in beams if beam_scores[b] > float("-inf")][:nbest]
        results[sentence] = [Hypothesis(_until_eos(beam_tokens[b], eos_id), beam_scores[b]) for b in kept]


def _until_eos(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens
