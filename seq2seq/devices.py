"""Where a model runs: the CPU, or a CUDA GPU when one is asked for or (auto) available."""

from __future__ import annotations

import torch

from seq2seq.config import DEVICES
from seq2seq.errors import ConfigError


def resolve(setting: str) -> torch.device:
    """The device for `setting` (auto | cpu | cuda). auto takes the GPU when torch sees one, as a user with
    a GPU expects; asking for cuda where there is none is an error, not a silent fall-back to the CPU."""
    if setting not in DEVICES:
        raise ConfigError(f"device {setting}: expected one of {', '.join(DEVICES)}")
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device cuda: this torch sees no CUDA GPU (a CPU-only build, or none visible); "
                          "use cpu or auto")
    return torch.device("cuda")


def of(model: torch.nn.Module) -> torch.device:
    """The device a model's weights are on (an int8 model keeps its embeddings as ordinary weights)."""
    return next(model.parameters()).device
