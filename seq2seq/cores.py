"""Torch threads that follow the cores this process really gets, on a machine where other programs run.

Torch's CPU threads meet at the end of every parallel product, so the slowest thread sets the pace. When
another program takes one of the cores, one of our threads waits for its turn on the core while the others
wait for it: on two cores beside one busy process, training with two threads ran at 0.34x its idle speed,
where one thread kept 0.67x (bench/README.md, "A busy machine"). A `CoreWatch` therefore reads, every few
seconds, how much of this process's CPUs other programs used (the CPUs' busy time in /proc/stat less this
process's own CPU time), and sets torch's thread count to the cores they left free: never more than were
asked for, never fewer than one. An idle machine keeps the count asked for.

Linux only (elsewhere there is no /proc/stat and the count stays as set). Limits set by a cgroup's CPU quota
(a container's `--cpus`) are not seen; pin the count there (train.threads, translate's --threads).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

PROC_STAT = Path("/proc/stat")
INTERVAL_S = 2.0  # seconds between two looks: short against a run, long against the clock's tick (10 ms)
AGREEING_LOOKS = 2  # a new count is taken when this many looks in a row ask for it: one burst changes nothing
IDLE_FIELDS = (3, 4)  # idle, iowait; every other field of a cpuN line is time the CPU was taken (steal included)


@dataclass(frozen=True)
class CpuTimes:
    """Seconds since boot that this process's CPUs were busy, and this process's own CPU seconds, at one moment."""

    busy: float
    own: float
    wall: float


@dataclass(frozen=True)
class ThreadsChanged:
    """The watch changed torch's thread count: other programs used `others` of the `cores` this process may run on."""

    threads: int
    was: int
    others: float
    cores: int


def read_times(cpus: frozenset[int], stat: Path = PROC_STAT) -> CpuTimes | None:
    """The busy time of `cpus` from /proc/stat, with this process's CPU time; None where there is no /proc/stat."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks += sum(int(value) for index, value in enumerate(fields[:8]) if index not in IDLE_FIELDS)
    return CpuTimes(ticks / os.sysconf("SC_CLK_TCK"), time.process_time(), time.monotonic())


def free_cores(before: CpuTimes, after: CpuTimes, cores: int) -> tuple[float, float]:
    """Cores left free by other programs between two readings, and the cores those programs used."""
    seconds = after.wall - before.wall
    others = max(0.0, ((after.busy - before.busy) - (after.own - before.own)) / seconds)
    return max(0.0, cores - others), others


def threads_for(free: float, asked: int) -> int:
    """The thread count for `free` cores: one for each core free, a core counting when more than half of it is."""
    return max(1, min(asked, math.floor(free + 0.5)))


class CoreWatch:
    """Keeps torch's thread count at the cores other programs leave free, at most `asked` (torch's count at the
    start); or, `pinned`, at that many threads whatever else runs. Use it around the work: on leaving, torch's
    count is put back as it was.

    `look()` is cheap (a clock read) except every INTERVAL_S, when it reads /proc/stat; call it between
    units of work (updates, batches). `on_change` hears of every change.
    """

    def __init__(self, on_change: Callable[[ThreadsChanged], None] = lambda change: None, *, pinned: int = 0,
                 read: Callable[[frozenset[int]], CpuTimes | None] | None = None, cpus: frozenset[int] | None = None) -> None:
        self._before = torch.get_num_threads()
        if pinned:
            torch.set_num_threads(pinned)
        self.asked, self._interval = torch.get_num_threads(), INTERVAL_S
        self._cpus = cpus if cpus is not None else frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else frozenset()
        self._read, self._on_change = read or read_times, on_change
        self._last = self._read(self._cpus) if self.asked > 1 and self._cpus and not pinned else None
        self._wanted: list[int] = []

    def __enter__(self) -> CoreWatch:
        return self

    def __exit__(self, *exception: object) -> None:
        torch.set_num_threads(self._before)

    def look(self) -> None:
        if self._last is None or time.monotonic() - self._last.wall < self._interval:
            return
        now = self._read(self._cpus)
        if now is None:
            return
        free, others = free_cores(self._last, now, len(self._cpus))
        self._last = now
        self._wanted = [*self._wanted, threads_for(free, self.asked)][-AGREEING_LOOKS:]
        threads = torch.get_num_threads()
        if len(self._wanted) == AGREEING_LOOKS and len(set(self._wanted)) == 1 and self._wanted[0] != threads:
            torch.set_num_threads(self._wanted[0])
            self._on_change(ThreadsChanged(self._wanted[0], threads, others, len(self._cpus)))
