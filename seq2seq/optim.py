"""The optimizer and the learning-rate schedule, built from the training config.

The schedule is a small object of plain numbers rather than a torch LR scheduler: the rate at a
step is a pure function of (step, reductions so far), so it is easy to read, to test and to
restore exactly when a run resumes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from seq2seq.config import TrainConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW, fused: one kernel updates each parameter, where torch's default on CPU is a loop
    of a dozen element-wise ops per parameter."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.Adam(params, lr=cfg.lr, fused=True)


class LearningRate:
    """lr(step) = peak x warm-up x decay, floored at min_lr; `plateau` halves (x factor) on a stalled validation score (higher is better: the loop negates error rates)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.reductions = 0          # plateau: how many times the rate was cut
        self.stalled = 0             # plateau: validations since the last new best
        self.best = -math.inf

    def at(self, step: int) -> float:
        """The rate for update number `step` (1-based)."""
        cfg = self.cfg
        rate = cfg.lr
        if cfg.warmup_steps and step < cfg.warmup_steps:
            rate *= step / cfg.warmup_steps
        elif cfg.schedule == "inverse-sqrt":
            rate *= math.sqrt(max(cfg.warmup_steps, 1) / step)
        rate *= cfg.plateau_factor ** self.reductions
        return max(rate, cfg.min_lr) if step >= cfg.warmup_steps else rate

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        rate = self.at(step)
        for group in optimizer.param_groups:
            group["lr"] = rate
        return rate

    def after_validation(self, score: float) -> bool:
        """Record a validation score; True when the plateau schedule just cut the rate."""
        if score > self.best:
            self.best, self.stalled = score, 0
            return False
        self.stalled += 1
        if self.cfg.schedule == "plateau" and self.stalled >= self.cfg.plateau_patience:
            self.reductions, self.stalled = self.reductions + 1, 0
            return True
        return False

    def state_dict(self) -> dict[str, float]:
        return {"reductions": self.reductions, "stalled": self.stalled, "best": self.best}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.reductions, self.stalled, self.best = int(state["reductions"]), int(state["stalled"]), float(state["best"])
