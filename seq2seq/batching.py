"""Translating many small requests together: what `seq2seq serve` puts behind its HTTP API.

Requests arriving within a short wait of each other are searched together, so a hundred one-line
requests cost about what one hundred-line file does. Searchers take rounds of queued requests: with one,
a thread searching in this process (a single owner needs no locks around the model); with more, as many
threads each handing its rounds to a forked worker process (`seq2seq.workers`), so that one round is
searched while the next gathers, each on its share of the cores. A searcher forms its next round only
once it is free, so the requests that came meanwhile go together. Callers get a
`concurrent.futures.Future` per request.

A request's result never depends on the requests it shares a round with: only requests with the
same search settings, n-best, alignment and <unk> replacement are searched together, each group as
one `Translator.translate` call, which sorts its lines by length into batches and puts them back in
order. Sampled requests are searched alone, because a line's samples are drawn from its line
number in the call.

    batcher = Batcher(seq2seq.load("best.pt"), max_wait_s=0.01)
    future = batcher.submit(["Ein Hund rennt."], nbest=2, options={"beam_size": 4})
    print(future.result()[0][0].text)
    batcher.close()
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

import torch

from seq2seq.config import SearchConfig
from seq2seq.errors import Seq2SeqError, WorkerDied
from seq2seq.translation import Translation, length_limits
from seq2seq.translator import Translator
from seq2seq.workers import WorkerPool, worker_count

Results = list[list[Translation]]


class QueueFull(Seq2SeqError):
    """More lines are waiting than the batcher holds, or it is closing: the caller should try again later."""


class OverLimit(Seq2SeqError):
    """A request asks for a longer search than the batcher allows (`max_output_pieces`)."""


class Options(NamedTuple):
    """What a request's outputs depend on besides its lines: requests searched together share all of it."""

    settings: SearchConfig
    nbest: int
    alignment: bool
    replace_unk: bool


class Request(NamedTuple):
    lines: list[str]
    options: Options
    future: Future


class Batcher:
    """Searchers translating queued requests in rounds: a free searcher waits up to `max_wait_s` after a round's
    first request for more (less once a full batch of lines, or with several searchers its share, is waiting),
    then takes the queued requests, oldest first: all of them, or with several searchers its share of the lines.

    `workers`: searchers, each but a lone one in its own forked process (0 = one per core on a Linux CPU, as
    `seq2seq translate --workers`; 1 on a GPU). `threads`: torch threads for each search (0 = the cores shared
    among the workers; with one searcher, torch's default), set for the whole process when it searches itself.
    `max_queued_lines` bounds the lines waiting: `submit` refuses more with QueueFull. `max_source_pieces` cuts
    longer lines, as `Translator.stream` does; `max_output_pieces` (0 = no limit) refuses with OverLimit a
    request whose search could write more pieces for one of its lines.
    """

    def __init__(self, translator: Translator, *, max_wait_s: float = 0.01, max_queued_lines: int = 10_000,
                 max_source_pieces: int = 0, max_output_pieces: int = 0, threads: int = 0, workers: int = 1) -> None:
        self.translator = translator
        self.max_wait_s = max_wait_s
        self.max_queued_lines = max_queued_lines
        self.max_source_pieces = max_source_pieces
        self.max_output_pieces = max_output_pieces
        self.workers = worker_count(workers, translator.device)
        self._threads = threads or (max(1, torch.get_num_threads() // self.workers) if self.workers > 1 else 0)
        if self.workers == 1 and self._threads:
            torch.set_num_threads(self._threads)
        self._pool = self._new_pool()
        self._queue: deque[Request] = deque()
        self._queued_lines = 0
        self._searching_lines = 0
        self._closed = False
        self._changed = threading.Condition()
        self._searchers = [threading.Thread(target=self._work, name=f"seq2seq-batcher-{number}", daemon=True)
                           for number in range(self.workers)]
        for searcher in self._searchers:
            searcher.start()

    def submit(self, lines: Sequence[str], *, nbest: int = 1, alignment: bool = False, replace_unk: bool = False,
               options: dict[str, Any] | None = None) -> Future:
        """Queue `lines` for translation with search settings `options` (checked now: a ConfigError names a bad
        one, an OverLimit a line over `max_output_pieces`); the future's result is what `Translator.translate`
        returns for them."""
        settings = self.translator.call_settings(nbest, **(options or {}))
        self._check_output_lengths(lines, settings)
        request = Request(list(lines), Options(settings, nbest, alignment, replace_unk), Future())
        with self._changed:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if self._queued_lines + len(request.lines) > self.max_queued_lines:
                raise QueueFull(f"{self._queued_lines:,} lines are waiting to be translated; try again shortly")
            self._queue.append(request)
            self._queued_lines += len(request.lines)
            self._changed.notify_all()  # a searcher gathering a round, and any other free one
        return request.future

    def output_pieces(self, source_pieces: int, settings: SearchConfig) -> int:
        """The most pieces (end of sentence not counted) a search with `settings` may write for a line of
        `source_pieces` pieces, once cut to `max_source_pieces`: the search's own length limit."""
        if self.max_source_pieces:
            source_pieces = min(source_pieces, self.max_source_pieces)
        return int(length_limits(torch.tensor([source_pieces + 1]), settings)) - 1

    def _check_output_lengths(self, lines: Sequence[str], settings: SearchConfig) -> None:
        """Refuse lines whose search could run past `max_output_pieces`; the lines are read only when the
        longest line the batcher lets through could."""
        limit = self.max_output_pieces
        if not limit or (self.max_source_pieces and self.output_pieces(self.max_source_pieces, settings) <= limit):
            return
        for number, ids in enumerate(self.translator.tokenizers.src.encode(list(lines))):
            if ids and (most := self.output_pieces(len(ids), settings)) > limit:
                raise OverLimit(f"line {number}'s output may run to {most:,} pieces with max_length_ratio "
                                f"{settings.max_length_ratio:g}, max_length_constant {settings.max_length_constant} "
                                f"and min_length {settings.min_length}; the limit is {limit:,} (--max-output-pieces)")

    def close(self) -> None:
        """Refuse new requests, finish those queued, and wait for the searchers to end."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        for searcher in self._searchers:
            searcher.join()
        if self._pool is not None:
            self._pool.close()

    def _new_pool(self) -> WorkerPool | None:
        """The worker processes that search, when there is more than one searcher."""
        return WorkerPool(self._translate_here, self.workers, self._threads) if self.workers > 1 else None

    def _work(self) -> None:
        while round_ := self._next_round():
            groups: dict[Any, list[Request]] = {}
            for request in round_:
                if request.future.set_running_or_notify_cancel():  # False: its caller left while it waited
                    key = (request.options, id(request)) if request.options.settings.sample else request.options
                    groups.setdefault(key, []).append(request)
            for group in groups.values():
                self._search(group)
            with self._changed:
                self._searching_lines -= sum(len(request.lines) for request in round_)
                self._changed.notify_all()

    def _next_round(self) -> list[Request]:
        """The requests of this searcher's next round; empty once closed and drained."""
        with self._changed:
            while True:
                while not self._queue and not self._closed:
                    self._changed.wait()
                deadline = time.monotonic() + self.max_wait_s
                while (not self._closed and self._queued_lines < self._awaited_lines()
                       and (left := deadline - time.monotonic()) > 0):
                    self._changed.wait(left)
                if self._queue or self._closed:  # else another searcher took them meanwhile
                    return self._take(self._share())

    def _share(self) -> int:
        """A searcher's even share of the lines in the batcher, queued or being searched. Taking no more than
        it evens out the rounds: with closed-loop clients, a searcher that took few lines once would otherwise
        take the same few again each time they came back, searching them in small, slow batches."""
        return -(-(self._queued_lines + self._searching_lines) // self.workers)

    def _awaited_lines(self) -> int:
        """Lines a free searcher waits for (until `max_wait_s`): a full batch, or with several searchers its
        share, if less, since more would only wait for it."""
        batch_size = self.translator.search.batch_size
        return batch_size if self.workers == 1 else min(batch_size, self._share())

    def _take(self, lines: int) -> list[Request]:
        """Queued requests, oldest first, until they hold `lines` lines (a request is never split)."""
        round_: list[Request] = []
        taken = 0
        while self._queue and taken < lines:
            round_.append(request := self._queue.popleft())
            taken += len(request.lines)
        self._queued_lines -= taken
        self._searching_lines += taken
        return round_

    def _search(self, group: list[Request]) -> None:
        """Translate a group's lines in one call and hand each request its share. Should the call fail with a
        user error (a line the model cannot take), each request is translated alone, so only its own fails."""
        try:
            results = self._translate([line for request in group for line in request.lines], group[0].options)
        except Seq2SeqError as error:
            if len(group) > 1:
                for request in group:
                    self._search([request])
            else:
                group[0].future.set_exception(error)
            return
        except Exception as error:  # a bug: every caller hears of it, and the worker carries on
            for request in group:
                request.future.set_exception(error)
            return
        start = 0
        for request in group:
            request.future.set_result(results[start : start + len(request.lines)])
            start += len(request.lines)

    def _translate(self, lines: list[str], options: Options) -> Results:
        """`lines` translated here or by a worker process. Should a worker die (killed, most often for lack of
        memory), the workers are started afresh and the lines searched again, once; then WorkerDied."""
        if self._pool is None:
            return self._translate_here((lines, options))
        for _ in range(2):
            pool = self._pool
            try:
                return pool.result(pool.submit((lines, options)))
            except (WorkerDied, BrokenProcessPool):
                with self._changed:
                    if self._pool is pool:  # the first searcher to find it broken replaces it
                        pool.close()
                        self._pool = self._new_pool()
        raise WorkerDied(f"a worker process died twice searching {len(lines):,} lines (killed for lack of memory?)")

    def _translate_here(self, work: tuple[list[str], Options]) -> Results:
        lines, options = work
        return self.translator.translate(lines, nbest=options.nbest, attention=options.alignment,
                                         replace_unk=options.replace_unk, max_source_pieces=self.max_source_pieces,
                                         **dataclasses.asdict(options.settings))
