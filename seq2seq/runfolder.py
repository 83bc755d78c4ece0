"""The run folder, the one owner of a run's files, and the training state that lets a stopped run continue exactly.

A run folder holds config.toml, metrics.jsonl, best.pt and last.pt (and step-N.pt with train.keep_best).
Training refuses a folder that already holds a run unless it is told to replace it (overwrite) or to
continue it (resume). Every file is written through `atomic_write`, in an order that keeps them
consistent whenever the run is killed (`RunFolder.save`). Besides
the model, last.pt carries what the loop needs to go on as if it had never stopped: the optimizer's
moments, the learning-rate schedule's state, the loop's position (step, epoch, batches done in the
epoch), the best validation score so far, the metrics history (which early stopping counts from), the time trained
and torch's RNG state (the next dropout masks); with train.ema_decay, its model is the weights' average and the
trained weights come with the training state. The batch order
needs nothing saved: each epoch's plan is a function of (seed, epoch).

A run trained by several processes (seq2seq.distributed) also records how many there were and each one's
RNG state, and resumes only with as many: its batches hold that many shares, and each rank draws its own
dropout masks.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import torch

from seq2seq import checkpoint
from seq2seq.checkpoint import TrainedModel
from seq2seq.config import Config, TrainConfig, changed_setting, to_toml
from seq2seq.errors import CheckpointError, ConfigError, DataError
from seq2seq.metrics import higher_is_better
from seq2seq.optim import LearningRate
from seq2seq.textio import atomic_write
from seq2seq.tokenizer import Tokenizers

try:
    import fcntl  # POSIX advisory locks; where there are none (Windows), runs are not locked
except ImportError:
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"  # held by the run training in the folder, with its pid inside
RUN_FILES = ("config.toml", "metrics.jsonl", "best.pt", "last.pt", "last.valid.txt", "best.valid.txt")
# last.valid.txt: the validation set's outputs at the latest validation; best.valid.txt: at best.pt's
KEPT_BEST = "step-*.pt"  # train.keep_best's extra checkpoints
# What a resumed run may change: when to stop, how often to report and validate, on which files and with
# which search, which checkpoints to keep. Everything else (data, tokenizer, model, optimizer and its
# schedule, seed, batching) shapes the next updates.
MAY_CHANGE_ON_RESUME = (
    "train.max_steps", "train.max_time", "train.patience", "train.valid_every", "train.log_every", "train.threads",
    "train.max_nonfinite", "train.keep_best", "train.backend", "train.device", "data.valid_source", "data.valid_target", "search.",
)


@dataclass
class LoopState:
    """Where the training loop stands between two updates."""

    step: int = 0
    epoch: int = 1
    position: int = 0            # batches of `epoch` already trained on
    best_score: float | None = None  # the selected metric's best validation score (train.select_metric)
    elapsed: float = 0.0         # seconds trained, all sessions together (what --max-time counts)
    nonfinite_in_a_row: int = 0  # updates skipped in a row for a NaN/inf loss or gradient
    history: list[dict[str, Any]] = field(default_factory=list)  # the rows of metrics.jsonl

    def limit_reached(self, settings: TrainConfig) -> str:
        if settings.max_steps and self.step >= settings.max_steps:
            return "max_steps"
        if settings.max_time and self.elapsed >= settings.max_time * 60:
            return "max_time"
        return ""


class Resumed(NamedTuple):
    checkpoint: checkpoint.Checkpoint  # last.pt: config, tokenizers and model as they were
    state: LoopState


class RunFolder:
    """A run's folder and every file in it: checked, created, then written by the training loop through `save`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.unfinished: list[str] = []  # files of an earlier start that saved no checkpoint, which this run replaces
        self._lock: IO[bytes] | None = None
        self._created = False  # whether `lock` made the folder

    def lock(self) -> None:
        """Take the folder's lock for this run's life, creating the folder: one run per folder at a time.

        An advisory lock (flock) on LOCK, which the system releases when the process ends however it ends, so a
        killed run leaves no stale lock. A folder another run holds is a ConfigError naming that run's pid.
        """
        self._refuse_a_file()
        self._created = not self.path.exists()
        while True:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                handle = open(self.path / LOCK, "a+b", buffering=0)  # unbuffered: a failed write keeps nothing to retry
            except OSError as error:
                raise DataError(f"{self.path}: cannot create the run folder ({error.strerror})") from None
            if fcntl is None:
                handle.close()
                return
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().decode("ascii", "replace").strip() or "unknown"
                handle.close()
                raise ConfigError(f"{self.path} is in use by another training run (pid {holder}); wait for it to end "
                                  "or train into another folder") from None
            if _same_file(handle, self.path / LOCK):
                break
            handle.close()  # the run before removed the file between our open and our lock: take the new one
        self._lock = handle
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n".encode("ascii"))
        except OSError as error:  # a full disk: let the folder go as it was, and say which file could not be written
            self.unlock()
            raise DataError(f"{self.path / LOCK}: could not be written ({error.strerror}); nothing was written") from None

    def unlock(self) -> None:
        """Let the folder go: the lock file is removed (while still held), and the folder too if this run made it
        and left nothing in it (a start that failed before writing)."""
        if self._lock is None:
            return
        (self.path / LOCK).unlink(missing_ok=True)
        self._lock.close()
        self._lock = None
        if self._created and not any(self.path.iterdir()):
            self.path.rmdir()

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    def check(self, cfg: Config, *, overwrite: bool, resume: bool, world_size: int = 1) -> Resumed | None:
        """Decide whether a run may go into the folder, writing nothing; when resuming, return what last.pt holds.

        `world_size`: how many processes will train together; a run resumes only with as many as trained it.
        """
        if overwrite and resume:
            raise ConfigError("--resume and --overwrite exclude each other: continue the run in the folder, or replace it")
        self._refuse_a_file()
        if resume:
            return _resumable(self.path, cfg, world_size)
        existing = [path.name for path in self._run_files()]
        if existing and not overwrite and not any(name.endswith(".pt") for name in existing):
            self.unfinished = existing  # a start that failed or was killed before its first save: nothing to resume
        elif existing and not overwrite:
            raise ConfigError(f"{self.path} already holds a run ({', '.join(existing)}); pass --resume to continue it "
                              "or --overwrite to replace it")
        return None

    def create(self, cfg: Config, *, overwrite: bool) -> None:
        """Create the folder, remove the replaced run's files and any temporary file a killed save left behind,
        and write config.toml."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DataError(f"{self.path}: cannot create the run folder ({error.strerror})") from None
        replaced = self._run_files() if overwrite or self.unfinished else []
        leftovers = [path for name in (*RUN_FILES, KEPT_BEST) for path in self.path.glob(f".{name}.*.tmp")]  # atomic_write's
        for path in replaced + leftovers:
            path.unlink(missing_ok=True)
        with atomic_write(self.path / "config.toml") as file:
            file.write(to_toml(cfg))

    def save(
        self, cfg: Config, tokenizers: Tokenizers, model: TrainedModel, *, step: int, history: list[dict[str, Any]],
        training: dict[str, Any], hypotheses: list[str] | None = None, facts: dict[str, Any] | None = None,
    ) -> None:
        """Save the model at `step`. After a validation (given its outputs, `hypotheses`; its scores are the last
        row of `history`): its outputs, then best.pt (and its outputs) on a new best and step-N.pt among the
        train.keep_best best; then, always, last.pt; then metrics.jsonl. Every checkpoint's info holds `facts`
        (where a fine-tuned run started) and the validation's scores.

        last.pt is what a resumed run starts from, so it is written once the other checkpoints agree with the
        best score and the history it records; metrics.jsonl is rebuilt from it on resume.
        """
        row = history[-1] if hypotheses is not None else None
        scores = {key: value for key, value in row.items() if key.startswith("valid_") or key.endswith("_signature")} if row else {}
        info = {**(facts or {}), **scores}

        def write(path: Path, **extra: Any) -> None:
            checkpoint.save(path, config=cfg, tokenizers=tokenizers, model=model, step=step, info=info, **extra)

        if row:
            self._write_lines("last.valid.txt", hypotheses)
        if row and row["best"]:
            write(self.best)
            self._write_lines("best.valid.txt", hypotheses)
        if row and cfg.train.keep_best > 1:
            kept = kept_steps(history, cfg.train.keep_best, cfg.train.select_metric)
            if step in kept:
                write(self.path / f"step-{step}.pt")
            for dropped in {row["step"] for row in history} - kept:
                (self.path / f"step-{dropped}.pt").unlink(missing_ok=True)
        write(self.last, training=training)
        if row:
            self.write_metrics(history)

    def _write_lines(self, name: str, lines: list[str] | None) -> None:
        with atomic_write(self.path / name) as file:
            file.writelines(line + "\n" for line in lines or [])

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """metrics.jsonl: one JSON object per validation."""
        with atomic_write(self.path / "metrics.jsonl") as file:
            file.writelines(json.dumps(row) + "\n" for row in history)

    def _refuse_a_file(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise DataError(f"{self.path}: is a file, but the run folder must be a folder")

    def _run_files(self) -> list[Path]:
        return [self.path / name for name in RUN_FILES if (self.path / name).exists()] + sorted(self.path.glob(KEPT_BEST))


def _same_file(handle: IO[bytes], path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def kept_steps(history: Sequence[dict[str, Any]], keep: int, metric: str = "bleu") -> set[int]:
    """The steps of the `keep` best validations in `history` by `metric` (its direction; on a tie, the earlier step)."""
    sign = -1 if higher_is_better(metric) else 1
    ranked = sorted(history, key=lambda row: (sign * row[f"valid_{metric}"], row["step"]))
    return {row["step"] for row in ranked[:keep]}


def _resumable(out_dir: Path, cfg: Config, world_size: int) -> Resumed:
    last = out_dir / "last.pt"
    if not last.is_file():
        raise ConfigError(f"{out_dir}: no run to resume (no last.pt there); start one without --resume")
    saved = checkpoint.load(last)
    loop_fields = {f.name for f in dataclasses.fields(LoopState)}
    loop = dict(saved.training.get("loop", {}))
    if "best_bleu" in loop:  # saved before train.select_metric, when BLEU chose (-1.0 before any validation)
        best = loop.pop("best_bleu")
        loop["best_score"] = best if best >= 0 else None
    if not ({"loop", "optimizer", "schedule", "rng"} <= saved.training.keys() and set(loop) == loop_fields):
        raise CheckpointError(f"{last}: holds no complete training state, so the run cannot be resumed")
    state = LoopState(**loop)
    trained_by = saved.training.get("world_size", 1)
    if trained_by != world_size:
        how = "in one process (without torchrun)" if trained_by == 1 else f"with torchrun, --nnodes x --nproc-per-node = {trained_by}"
        raise ConfigError(
            f"cannot resume {out_dir}: it was trained by {_processes(trained_by)} and this run has {_processes(world_size)}; "
            f"its batches were planned for {trained_by} (train.batch_tokens each), so resume it {how}"
        )
    changed = changed_setting(saved.config, cfg, fixed=lambda name: not name.startswith(MAY_CHANGE_ON_RESUME))
    if changed:
        name, before, now = changed
        raise ConfigError(
            f"cannot resume {out_dir}: {name} is {now!r} but the run was trained with {before!r}; a run resumes with "
            "its own settings (only when to stop, logging, kept checkpoints, validation files and search may change)"
        )
    if state.limit_reached(cfg.train):
        raise ConfigError(
            f"{out_dir} has already trained {state.step:,} steps ({state.elapsed / 60:.1f} min), its limit; "
            "raise --max-steps or --max-time to continue it"
        )
    return Resumed(saved, state)


def _processes(count: int) -> str:
    return "1 process" if count == 1 else f"{count} processes"


def training_state(
    state: LoopState, optimizer: torch.optim.Optimizer, rate: LearningRate, *, rng_by_rank: list[dict] | None = None,
    average: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What last.pt needs for an exact resume; the RNG state is taken now, at the step boundary.

    With several processes, `rng_by_rank` holds every rank's `rng_state()` (gathered on rank 0, which saves).
    With train.ema_decay, the checkpoint's model is the average and `average` holds the trained weights
    (`seq2seq.ema`).
    """
    training = {"loop": dataclasses.asdict(state), "optimizer": optimizer.state_dict(), "schedule": rate.state_dict(),
                "rng": torch.get_rng_state(), "world_size": len(rng_by_rank) if rng_by_rank else 1}
    if rng_by_rank:
        training["rng_by_rank"] = rng_by_rank
    if average:
        training["ema"] = average
    return training


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random state: torch's CPU generator, and its GPU's when it trains on one (dropout draws there)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore(resumed: Resumed, optimizer: torch.optim.Optimizer, rate: LearningRate, *, rank: int = 0) -> LoopState:
    """Put the optimizer's moments, the schedule's state and torch's RNG (this rank's) back as they were at the save."""
    training = resumed.checkpoint.training
    optimizer.load_state_dict(training["optimizer"])
    rate.load_state_dict(training["schedule"])
    if "rng_by_rank" in training:
        mine = training["rng_by_rank"][rank]
        torch.set_rng_state(mine["cpu"])
        if "cuda" in mine:
            torch.cuda.set_rng_state(mine["cuda"], torch.cuda.current_device())
    else:
        torch.set_rng_state(training["rng"])
    return resumed.state
