"""A training speed-up, swapped in by `seq2seq.training`: the weight gradients of the layers the decoder applies
at every step, computed once per batch instead of once per step.

Under plain autograd, a layer applied at each of T steps (the recurrent map h -> gates, input feeding's map,
the attention's query map, the map into the attentional vector) makes T weight-gradient products of a few
hundred rows each (the step's output gradient G_t by its input X_t) and adds each into a running sum; in
bf16 that sum is even kept in bf16, since autocast casts the weight once and autograd adds up the gradients
reaching the cast in its dtype. `StepLinear` hands each step's (G_t, X_t) to a stash instead, and once the
backward pass has gone through every step, the weight's gradient is one product,
sum_t G_t^T X_t = [G_1; ...; G_T]^T [X_1; ...; X_T], and the bias's one sum. The gradients of the inputs,
and so everything flowing back through time, are computed as before. The gradients are the same sums: in
fp32 equal up to rounding, in bf16 closer to fp32's (one product accumulates in fp32).

How autograd is brought to run that product last: the weight (cast once to autocast's dtype) enters the
steps through `_Shared`, a node every step takes an input from, so autograd runs its backward only after
all the steps' backwards have run; the steps return no gradient for it, and it computes the gradient itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function


class _Stash:
    """One forward pass's (output gradient, input) pairs of one layer, filled by the steps' backwards."""

    def __init__(self, version: int, dtype: torch.dtype) -> None:
        self.version, self.dtype = version, dtype  # the weight's version and the dtype its steps compute in
        self.grads: list[torch.Tensor] = []
        self.inputs: list[torch.Tensor] = []
        self.shared: tuple[torch.Tensor, ...] | None = None  # `_Shared`'s outputs, until its backward has run

    def usable(self, version: int, dtype: torch.dtype) -> bool:
        """Whether this pass's shared weight may serve another step: its gradient not yet taken, the weight unchanged."""
        return self.shared is not None and self.version == version and self.dtype == dtype


class _Shared(Function):
    """Forward: the weight (and bias) in the steps' dtype. Backward, after every step's: their gradients."""

    @staticmethod
    def forward(ctx, stash: _Stash, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        ctx.stash, ctx.weight_dtype, ctx.has_bias = stash, weight.dtype, bias is not None
        ctx.set_materialize_grads(False)  # the steps send no gradient here
        cast = [weight.to(stash.dtype, copy=True)]
        return tuple(cast + ([bias.to(stash.dtype, copy=True)] if bias is not None else []))

    @staticmethod
    def backward(ctx, *unused: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        stash = ctx.stash
        grads, inputs = torch.cat(stash.grads), torch.cat(stash.inputs)
        stash.grads, stash.inputs, stash.shared = [], [], None
        weight_grad = (grads.t() @ inputs).to(ctx.weight_dtype)
        bias_grad = grads.sum(0, dtype=torch.float32).to(ctx.weight_dtype) if ctx.has_bias else None
        return None, weight_grad, bias_grad


class _Step(Function):
    """x W^T + b for one step; its backward gives x's gradient and leaves (G_t, X_t) in the stash."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, stash: _Stash, weight: torch.Tensor, *bias: torch.Tensor) -> torch.Tensor:
        ctx.stash, ctx.input_dtype = stash, x.dtype
        x = x.to(weight.dtype)
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight, bias[0] if bias else None)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        ctx.stash.grads.append(grad.reshape(-1, grad.size(-1)))
        ctx.stash.inputs.append(x.reshape(-1, x.size(-1)))
        return (grad @ weight).to(ctx.input_dtype), None, None, None  # x, stash, weight, bias (if any)


class StepLinear(nn.Linear):
    """`nn.Linear` for a layer applied at every decoder step: with autograd on, its weight gradient is one
    product per forward pass (module docstring); otherwise, the layer it took the place of (validation's
    search keeps its own speed-ups, `seq2seq.speedups`)."""

    _stash: _Stash | None = None
    _replaced: Callable[[torch.Tensor], torch.Tensor] | None = None  # the forward of the layer swapped out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and self.weight.requires_grad):
            return self._replaced(x) if self._replaced else F.linear(x, self.weight, self.bias)
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else self.weight.dtype
        if self._stash is None or not self._stash.usable(self.weight._version, dtype):
            self._stash = _Stash(self.weight._version, dtype)  # a new pass, or the weights were updated
            self._stash.shared = _Shared.apply(self._stash, self.weight, self.bias)
        return _Step.apply(x, self._stash, *self._stash.shared)


def step_layers(model: nn.Module) -> list[str]:
    """The names of the linear layers the decoder applies at every step (`seq2seq.model`): each recurrent
    cell's hidden map, the input maps of cells above the first (the first's runs over all steps at once),
    input feeding's map, the attention's query map and the map into the attentional vector."""
    names = []
    for name, layer in model.named_modules():
        kind = name.rpartition(".")[2]
        above_first = kind == "input_map" and not name.startswith("cells.0.")
        if isinstance(layer, nn.Linear) and (kind in ("hidden_map", "feed_map", "query_map", "combine") or above_first):
            names.append(name)
    return names


def swap_in_step_linears(model: nn.Module) -> nn.Module:
    """Make each of the `step_layers` a `StepLinear`, in place, holding the very same parameters; return `model`.

    Without autograd each computes what the layer it replaces computes, by that layer's own forward: swap
    translation's speed-ups in first."""
    for name in step_layers(model):
        layer = model.get_submodule(name)
        swapped = StepLinear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        swapped.weight, swapped.bias = layer.weight, layer.bias
        swapped._replaced = layer.forward
        owner, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(owner), attribute, swapped)
    return model
