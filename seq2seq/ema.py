"""An exponential moving average of the weights (train.ema_decay), kept beside the trained ones.

After every update, average <- decay x average + (1 - decay) x weights. The average of the last few
thousand updates usually translates better than the weights of the last one, which follow the noise of
the last batches. Training goes on with the trained weights; validation measures the average, and the
checkpoints hold it (`swapped_in`), so best.pt is picked and saved by the average's scores. last.pt
also keeps the trained weights, so that a resumed run continues exactly.

The decay grows to train.ema_decay over the first updates, as min(decay, (1 + n) / (10 + n)) at update
n: a high decay would otherwise keep the random first weights in the average for thousands of updates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """The moving average of a model's parameters, updated in place after each optimizer step."""

    def __init__(self, model: nn.Module, decay: float, saved: dict[str, Any] | None = None) -> None:
        """Start the average at the model's weights. `saved` (a resumed run's `state`): the model holds the saved
        average, which is taken as such; the trained weights and the update count come from `saved`."""
        self.decay = decay
        self.named = dict(model.named_parameters())
        self.average = {name: param.detach().clone() for name, param in self.named.items()}
        self.updates = 0
        if saved:
            self.updates = saved["updates"]
            _copy(self.named, saved["trained"])

    def update(self) -> None:
        """Move the average toward the weights, after an update was made."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for name, param in self.named.items():
                self.average[name].lerp_(param, 1 - decay)

    @contextmanager
    def swapped_in(self) -> Iterator[dict[str, torch.Tensor]]:
        """The average in the model's parameters for the block (validate, save), the trained weights back after.
        Yields a copy of the trained weights: what `state` saves for resuming."""
        trained = {name: param.detach().clone() for name, param in self.named.items()}
        _copy(self.named, self.average)
        try:
            yield trained
        finally:
            _copy(self.named, trained)

    def state(self, trained: dict[str, torch.Tensor]) -> dict[str, Any]:
        """What last.pt keeps beside the average (its model): the trained weights, and the updates averaged."""
        return {"updates": self.updates, "trained": trained}


def _copy(parameters: dict[str, nn.Parameter], values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in parameters.items():
            param.copy_(values[name])
