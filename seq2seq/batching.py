"""Translating many small requests together: what `seq2seq serve` puts behind its HTTP API.

Requests arriving within a short wait of each other are searched together, so a hundred one-line
requests cost about what one hundred-line file does. One worker thread owns the model and runs every
search (torch releases the GIL inside its operations, and a single owner needs no locks around the
model); callers get a `concurrent.futures.Future` per request.

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
from typing import Any, NamedTuple

import torch

from seq2seq.config import SearchConfig
from seq2seq.errors import Seq2SeqError
from seq2seq.translation import Translation
from seq2seq.translator import Translator

Results = list[list[Translation]]


class QueueFull(Seq2SeqError):
    """More lines are waiting than the batcher holds, or it is closing: the caller should try again later."""


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
    """A worker thread translating queued requests in rounds: it waits up to `max_wait_s` after a round's
    first request for more (less once a full batch of lines is waiting), then takes every request queued.

    `max_queued_lines` bounds the lines waiting for the worker: `submit` refuses more with QueueFull.
    `max_source_pieces` cuts longer lines, as `Translator.stream` does. `threads`, when not 0, sets torch's
    threads (for the whole process): on a busy machine, fewer threads than cores keep torch's spinning
    threads from starving the ones that read and answer requests.
    """

    def __init__(self, translator: Translator, *, max_wait_s: float = 0.01, max_queued_lines: int = 10_000,
                 max_source_pieces: int = 0, threads: int = 0) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.translator = translator
        self.max_wait_s = max_wait_s
        self.max_queued_lines = max_queued_lines
        self.max_source_pieces = max_source_pieces
        self._queue: deque[Request] = deque()
        self._queued_lines = 0
        self._closed = False
        self._changed = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="seq2seq-batcher", daemon=True)
        self._worker.start()

    def submit(self, lines: Sequence[str], *, nbest: int = 1, alignment: bool = False, replace_unk: bool = False,
               options: dict[str, Any] | None = None) -> Future:
        """Queue `lines` for translation with search settings `options` (checked now: a ConfigError names a bad
        one); the future's result is what `Translator.translate` returns for them."""
        settings = self.translator.call_settings(nbest, **(options or {}))
        request = Request(list(lines), Options(settings, nbest, alignment, replace_unk), Future())
        with self._changed:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if self._queued_lines + len(request.lines) > self.max_queued_lines:
                raise QueueFull(f"{self._queued_lines:,} lines are waiting to be translated; try again shortly")
            self._queue.append(request)
            self._queued_lines += len(request.lines)
            self._changed.notify()
        return request.future

    def close(self) -> None:
        """Refuse new requests, finish those queued, and wait for the worker to end."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._worker.join()

    def _work(self) -> None:
        while round_ := self._next_round():
            groups: dict[Any, list[Request]] = {}
            for request in round_:
                if request.future.set_running_or_notify_cancel():  # False: its caller left while it waited
                    key = (request.options, id(request)) if request.options.settings.sample else request.options
                    groups.setdefault(key, []).append(request)
            for group in groups.values():
                self._search(group)

    def _next_round(self) -> list[Request]:
        """The requests of the next round; empty once closed and drained."""
        with self._changed:
            while not self._queue and not self._closed:
                self._changed.wait()
            deadline = time.monotonic() + self.max_wait_s
            while (not self._closed and self._queued_lines < self.translator.search.batch_size
                   and (left := deadline - time.monotonic()) > 0):
                self._changed.wait(left)
            round_ = list(self._queue)
            self._queue.clear()
            self._queued_lines = 0
            return round_

    def _search(self, group: list[Request]) -> None:
        """Translate a group's lines in one call and hand each request its share. Should the call fail with a
        user error (a line the model cannot take), each request is translated alone, so only its own fails."""
        options = group[0].options
        try:
            results = self.translator.translate(
                [line for request in group for line in request.lines], nbest=options.nbest,
                attention=options.alignment, replace_unk=options.replace_unk,
                max_source_pieces=self.max_source_pieces, **dataclasses.asdict(options.settings))
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
