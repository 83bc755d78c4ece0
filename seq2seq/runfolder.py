"""The run folder, and the training state that lets a stopped run continue exactly.

A run folder holds config.toml, metrics.jsonl, best.pt and last.pt. Training refuses a folder that
already holds a run unless it is told to replace it (overwrite) or to continue it (resume). Besides
the model, last.pt carries what the loop needs to go on as if it had never stopped: the optimizer's
moments, the learning-rate schedule's state, the loop's position (step, epoch, batches done in the
epoch), the best BLEU so far, the metrics history (which early stopping counts from), the time trained
and torch's RNG state (the next dropout masks). The batch order
needs nothing saved: each epoch's plan is a function of (seed, epoch).

A run trained by several processes (seq2seq.distributed) also records how many there were and each one's
RNG state, and resumes only with as many: its batches hold that many shares, and each rank draws its own
dropout masks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from seq2seq import checkpoint
from seq2seq.config import Config, TrainConfig, to_dict
from seq2seq.errors import CheckpointError, ConfigError, DataError
from seq2seq.optim import LearningRate

RUN_FILES = ("config.toml", "metrics.jsonl", "best.pt", "last.pt")
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
    best_bleu: float = -1.0
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


def check(out_dir: Path, cfg: Config, *, overwrite: bool, resume: bool, world_size: int = 1) -> Resumed | None:
    """Decide whether a run may go into `out_dir`, writing nothing; when resuming, return what last.pt holds.

    `world_size`: how many processes will train together; a run resumes only with as many as trained it.
    """
    if overwrite and resume:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run in the folder, or replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: is a file, but the run folder must be a folder")
    if resume:
        return _resumable(out_dir, cfg, world_size)
    existing = [path.name for path in _run_files(out_dir)]
    if existing and not overwrite:
        raise ConfigError(
            f"{out_dir} already holds a run ({', '.join(existing)}); pass --resume to continue it or --overwrite to replace it"
        )
    return None


def _resumable(out_dir: Path, cfg: Config, world_size: int) -> Resumed:
    last = out_dir / "last.pt"
    if not last.is_file():
        raise ConfigError(f"{out_dir}: no run to resume (no last.pt there); start one without --resume")
    saved = checkpoint.load(last)
    loop_fields = {f.name for f in dataclasses.fields(LoopState)}
    if not ({"loop", "optimizer", "schedule", "rng"} <= saved.training.keys() and set(saved.training["loop"]) == loop_fields):
        raise CheckpointError(f"{last}: holds no complete training state, so the run cannot be resumed")
    state = LoopState(**saved.training["loop"])
    trained_by = saved.training.get("world_size", 1)
    if trained_by != world_size:
        how = "in one process (without torchrun)" if trained_by == 1 else f"with torchrun, --nnodes x --nproc-per-node = {trained_by}"
        raise ConfigError(
            f"cannot resume {out_dir}: it was trained by {_processes(trained_by)} and this run has {_processes(world_size)}; "
            f"its batches were planned for {trained_by} (train.batch_tokens each), so resume it {how}"
        )
    changed = _changed_setting(saved.config, cfg)
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


def _changed_setting(saved: Config, cfg: Config) -> tuple[str, Any, Any] | None:
    """The first setting (section.key, saved value, new value) a resumed run may not change, if any."""
    now = to_dict(cfg)
    for section, values in to_dict(saved).items():
        for key, before in values.items():
            name = f"{section}.{key}"
            if before != now[section][key] and not name.startswith(MAY_CHANGE_ON_RESUME):
                return name, before, now[section][key]
    return None


def prepare(out_dir: Path, *, overwrite: bool) -> None:
    """Create the folder; remove the replaced run's files and any temporary file a killed save left behind."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"{out_dir}: cannot create the run folder ({error.strerror})") from None
    replaced = _run_files(out_dir) if overwrite else []
    leftovers = [path for name in (*RUN_FILES, KEPT_BEST) for path in out_dir.glob(f".{name}.*.tmp")]  # atomic_write's
    for path in replaced + leftovers:
        path.unlink(missing_ok=True)


def _run_files(out_dir: Path) -> list[Path]:
    return [out_dir / name for name in RUN_FILES if (out_dir / name).exists()] + sorted(out_dir.glob(KEPT_BEST))


def training_state(
    state: LoopState, optimizer: torch.optim.Optimizer, rate: LearningRate, *, rng_by_rank: list[dict] | None = None
) -> dict[str, Any]:
    """What last.pt needs for an exact resume; the RNG state is taken now, at the step boundary.

    With several processes, `rng_by_rank` holds every rank's `rng_state()` (gathered on rank 0, which saves).
    """
    training = {"loop": dataclasses.asdict(state), "optimizer": optimizer.state_dict(), "schedule": rate.state_dict(),
                "rng": torch.get_rng_state(), "world_size": len(rng_by_rank) if rng_by_rank else 1}
    if rng_by_rank:
        training["rng_by_rank"] = rng_by_rank
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
