"""Translation batches shared among forked worker processes on the CPU, each with its share of the cores,
as Marian's --cpu-threads and CTranslate2's inter_threads share them.

On a CPU, one process running its products on every core wastes much of them: the decoder's products
are small, and the step's other work (attention, log-softmax, the search's bookkeeping) is short, memory
bound or single-threaded. On a 2-core machine, two processes of one thread each translated Multi30k's
test set 1.2-1.3x faster than one process of two threads at batch 64, and up to 1.75x at batch 1
(bench/CHOICES.md). Threads in one process gained 1.05x: the search's many small operations queue for
Python's interpreter lock.

The workers are forked, so they start in milliseconds and share the parent's model without copying
or pickling it; only each batch's token ids and its results cross between processes.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import torch

from seq2seq.errors import ConfigError, WorkerDied

PR_SET_PDEATHSIG = 1  # Linux prctl option: the signal a process gets when the thread that forked it ends
AUTO_WORKERS_MAX = 8  # a chunk of input is 8 batches (`seq2seq.translation`): more workers would wait

Group = TypeVar("Group")
Item = TypeVar("Item")
Done = TypeVar("Done")

_job: Callable[[Any], Any] | None = None  # in a worker: what it runs on each item (inherited through fork)


def worker_count(requested: int, device: torch.device) -> int:
    """How many processes translate: `requested`, or for 0 one per core torch would use on a Linux CPU (at
    most AUTO_WORKERS_MAX; with fewer workers than cores, each takes a share of the cores).

    Workers are forked, and a forked child cannot use its parent's CUDA context, so a GPU translates in
    one process. Other systems than Linux keep one process unless asked: there, fork is unavailable or,
    on macOS, not safe with every system library.
    """
    if requested < 0:
        raise ConfigError(f"--workers must be 0 (one per core) or more, got {requested}")
    if requested == 0:
        on_linux_cpu = device.type == "cpu" and sys.platform.startswith("linux")
        return min(torch.get_num_threads(), AUTO_WORKERS_MAX) if on_linux_cpu else 1
    if requested > 1 and device.type != "cpu":
        raise ConfigError(f"--workers {requested} is for translating on the CPU; on {device.type}, one process "
                          "translates (use --workers 1)")
    if requested > 1 and "fork" not in multiprocessing.get_all_start_methods():
        raise ConfigError(f"--workers {requested} needs fork, which this system lacks; use --workers 1")
    return requested


def _start_worker(job: Callable[[Any], Any], threads: int) -> None:
    global _job
    _job = job
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent answers it
    if sys.platform.startswith("linux"):  # and if the parent is killed outright, its workers go with it
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _run(item: Any) -> Any:
    assert _job is not None, "_run runs in a worker, after _start_worker"
    return _job(item)


class WorkerPool:
    """`workers` forked processes running `job` on the items submitted, `threads` CPU threads each.

    `job` is inherited by the workers through fork, never pickled: it may be a closure over the model.
    Its items and results are pickled. An error it raises comes back from `result`; a worker that dies
    makes `result` raise WorkerDied.
    """

    def __init__(self, job: Callable[[Any], Any], workers: int, threads: int) -> None:
        self._executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                             initializer=_start_worker, initargs=(job, threads))
        self._closing = threading.Event()
        forked: Future = Future()
        self._forker = threading.Thread(target=self._fork, args=(forked,), name="worker-forker", daemon=True)
        self._forker.start()
        forked.result()

    def _fork(self, forked: Future) -> None:
        """Start the workers from this new thread, then wait for `close`.

        OpenMP (GNU libgomp, torch's CPU threads) keeps a pool of threads per thread that has run parallel
        work, and fork copies the pool's records but not its threads: a worker forked from such a thread
        hangs at its first parallel region of two threads or more. This thread has run none. It stays
        until the workers are gone, since Linux sends PR_SET_PDEATHSIG when the forking thread ends.
        """
        try:
            self._executor.submit(int)  # a fork pool forks all its workers at its first submit (CPython gh-90622)
        except BaseException as error:
            forked.set_exception(error)
            return
        forked.set_result(None)
        self._closing.wait()

    def submit(self, item: Any) -> Future:
        return self._executor.submit(_run, item)

    @staticmethod
    def result(future: Future) -> Any:
        try:
            return future.result()
        except BrokenProcessPool:
            raise WorkerDied("a translation worker process died (killed for lack of memory?): "
                             "try --workers 1 or a smaller --batch-size") from None

    def close(self) -> None:
        """Stop the workers; work queued and not yet started is dropped."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._closing.set()
        self._forker.join()


def map_in_order(
    job: Callable[[Item], Done], groups: Iterator[Group], items_of: Callable[[Group], Sequence[Item]], workers: int,
    threads: int = 0,
) -> Iterator[tuple[Group, list[Done]]]:
    """Each group with `job`'s result for each of its items, in order; with `workers` above 1, in a `WorkerPool`
    of `threads` threads each (0 = the cores torch uses shared among them).

    The workers start at the first group of two items or more (one item is not worth a process), and
    every later group goes to them. A group's items are queued before the previous group's results are
    collected, so that the workers do not wait while the caller reads the next group and writes the
    finished one. If reading a group fails (a bad line on stdin), the group already queued still comes
    out first. A group's items are submitted last first: a chunk's batches are sorted by length, so the
    longest start first and no worker idles long at the end.
    """
    pool: WorkerPool | None = None
    queued: tuple[Group, list[Future]] | None = None  # a group whose items the workers have
    try:
        while True:
            try:
                group = next(groups, None)
            except Exception:
                if queued is not None:
                    yield _collected(pool, queued)
                raise
            if group is None:
                break
            items = items_of(group)
            if pool is None and workers > 1 and len(items) > 1:
                pool = WorkerPool(job, workers, threads=threads or max(1, torch.get_num_threads() // workers))
            if pool is None:
                yield group, [job(item) for item in items]
                continue
            submitted = group, [pool.submit(item) for item in reversed(items)][::-1]
            if queued is not None:
                yield _collected(pool, queued)
            queued = submitted
        if queued is not None:
            yield _collected(pool, queued)
    finally:
        if pool is not None:
            pool.close()


def _collected(pool: WorkerPool | None, queued: tuple[Group, list[Future]]) -> tuple[Group, list[Any]]:
    assert pool is not None, "only a pool's futures are queued"
    group, futures = queued
    return group, [pool.result(future) for future in futures]
