"""Data-parallel training over several processes: PyTorch's DistributedDataParallel, started by torchrun.

torchrun starts one process (a rank) per device and tells each where it stands through the environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). `join` reads it. With WORLD_SIZE unset or 1
there is no process group: the `World` of one process makes every method below a plain call, so a
single process trains exactly as it always did.

With several ranks, each runs the same training loop on its share of every batch and DDP averages the
gradients during backward. What must be decided once is decided here, the same way on every rank:
`on_main` runs work (validating, saving) on rank 0 and hands its result, or its error, to all;
`everywhere` makes one rank's error every rank's; `sum` and `most_urgent` combine per-step numbers
and stop requests. So the ranks never disagree about what to do next, and none waits for the others
forever: a rank that dies closes its connections, which fails its peers' next collective at once, and
a collective that waits longer than TIMEOUT raises in any case.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from seq2seq import devices
from seq2seq.errors import ConfigError, Seq2SeqError

# Long enough for rank 0 to validate and save while the others wait; a lost rank still ends the run.
TIMEOUT = timedelta(minutes=30)
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes training together. Rank 0 validates, writes and reports."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """What the training forward goes through: the model itself, or DDP around it (which copies rank 0's
        weights to every rank now and averages the gradients over ranks in every backward)."""
        if self.size == 1:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)

    def on_main(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`work(*args, **kwargs)` on rank 0 alone; every rank returns its result (pickled across), or raises the
        Seq2SeqError it raised. The other ranks wait here meanwhile, so this is also a barrier after rank 0's writes."""
        if self.size == 1:
            return work(*args, **kwargs)
        outcome: list[Any] = [_attempt(work, args, kwargs) if self.is_main else None]
        dist.broadcast_object_list(outcome, src=0)
        result, error = outcome[0]
        if error is not None:
            raise error
        return result

    def everywhere(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`work(*args, **kwargs)` on every rank, each keeping its own result; if it raised a Seq2SeqError on any
        rank, every rank raises it (the lowest rank's), so that none goes on to wait for a rank that has stopped."""
        if self.size == 1:
            return work(*args, **kwargs)
        result, error = _attempt(work, args, kwargs)
        errors: list[Any] = [None] * self.size
        dist.all_gather_object(errors, error)
        for rank, failure in enumerate(errors):
            if failure is not None:
                raise failure if rank == self.rank else type(failure)(f"rank {rank}: {failure}")
        return result

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over ranks (float64: a loss summed over a large batch keeps its digits)."""
        if self.size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def most_urgent(self, reason: str, ranking: tuple[str, ...]) -> str:
        """The most urgent of the ranks' `reason`s, least urgent first in `ranking` ("" = none)."""
        if self.size == 1:
            return reason
        if reason not in ranking:
            raise ValueError(f"unknown reason {reason!r}; expected one of {ranking}")
        tensor = torch.tensor([ranking.index(reason)], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return ranking[int(tensor)]

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on rank 0; an empty list on the others."""
        if self.size == 1:
            return [value]
        gathered: list[Any] | None = [None] * self.size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered or []


ALONE = World()  # one process: no process group, every method a plain call


def _attempt(work: Callable[..., T], args: tuple, kwargs: dict[str, Any]) -> tuple[T | None, Seq2SeqError | None]:
    try:
        return work(*args, **kwargs), None
    except Seq2SeqError as error:
        return None, error


@contextmanager
def join(backend: str = "auto", device: str = "auto") -> Iterator[World]:
    """This process's World for the length of a run.

    A process group that the caller has set up already (`dist.init_process_group`) is used as it is and left
    to the caller. Otherwise, under torchrun (WORLD_SIZE > 1) this joins the group that the environment
    describes (`env://`) and leaves it when the run ends; the backend then decides the device. Otherwise:
    one process, no group, on `device` (auto | cpu | cuda).
    """
    if dist.is_available() and dist.is_initialized():
        yield _world(dist.get_backend())
        return
    size = _environment_int("WORLD_SIZE", default=1)
    if size <= 1:
        yield World(device=devices.resolve(device))
        return
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={size} is set but {', '.join(missing)} not: start training on several processes "
                          "with torchrun (README, 'Scaling out'), or unset WORLD_SIZE")
    if not dist.is_available():
        raise ConfigError(f"WORLD_SIZE={size} asks for several processes, but this torch build has no torch.distributed")
    backend = _backend(backend)
    if backend == "nccl":
        torch.cuda.set_device(_cuda_device())
    dist.init_process_group(backend, init_method="env://", timeout=TIMEOUT)
    yield _world(backend)
    # Only after a run that ended normally: destroying the group while another rank still waits in a
    # collective can deadlock (pytorch/torchtitan#1342). A rank that fails just exits, which closes its
    # connections, and its peers' collectives fail at once.
    # The barrier first: while it waits (without the GIL), gloo's worker threads let go of the tensors of
    # the last collectives. Left to interpreter shutdown, that release aborts the process (SIGABRT,
    # "terminate called without an active exception"; seen here 1 run in 5 without it).
    # The run's DDP wrapper sits in reference cycles: collect it now, while the group it holds is alive.
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def _world(backend: str) -> World:
    """nccl trains on this process's GPU (cuda:LOCAL_RANK); gloo on the CPU."""
    device = _cuda_device() if backend == "nccl" else torch.device("cpu")
    return World(dist.get_rank(), dist.get_world_size(), device)


def _backend(setting: str) -> str:
    if setting == "auto":
        return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if setting == "nccl" and not torch.cuda.is_available():
        raise ConfigError("train.backend = nccl needs CUDA GPUs, and this torch sees none; use gloo (CPU) or auto")
    return setting


def _cuda_device() -> torch.device:
    local_rank = _environment_int("LOCAL_RANK", default=0)
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPUs visible: "
                          "give torchrun --nproc-per-node at most that many")
    return torch.device("cuda", local_rank)


def _environment_int(name: str, *, default: int) -> int:
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} must be a whole number") from None
