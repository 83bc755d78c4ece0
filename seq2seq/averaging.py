"""Checkpoint averaging: the mean of the weights of several checkpoints of one run, a cheap ensemble."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from seq2seq import checkpoint
from seq2seq.config import to_dict
from seq2seq.errors import CheckpointError


def average(paths: Sequence[str | Path]) -> checkpoint.Checkpoint:
    """Load each checkpoint and return the first with every floating-point weight replaced by the mean."""
    if not paths:
        raise CheckpointError("averaging needs at least one checkpoint")
    loaded = [checkpoint.load(path) for path in paths]
    first = loaded[0]
    for path, other in zip(paths[1:], loaded[1:]):
        if to_dict(other.config)["model"] != to_dict(first.config)["model"]:
            raise CheckpointError(f"{path}: its model settings differ from {paths[0]}'s; only checkpoints of one model average")
        if (other.tokenizers.src.model_proto, other.tokenizers.tgt.model_proto) != (
                first.tokenizers.src.model_proto, first.tokenizers.tgt.model_proto):
            raise CheckpointError(f"{path}: its tokenizers differ from {paths[0]}'s; only checkpoints of one run average")
    states = [item.model.state_dict() for item in loaded]
    mean = {name: torch.stack([state[name] for state in states]).mean(0) if value.is_floating_point() else value
            for name, value in states[0].items()}
    first.model.load_state_dict(mean)
    info = {"averaged": [str(path) for path in paths], "averaged_steps": [item.step for item in loaded]}
    return first._replace(step=max(item.step for item in loaded), info=info, training={})
