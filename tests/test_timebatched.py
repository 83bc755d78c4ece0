"""The per-step layers' weight gradients computed once per batch (`seq2seq.timebatched`) are the plain ones.

The models are in eval mode (no dropout, so both draw the same numbers); autograd is on, which is what counts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from seq2seq.config import ModelConfig
from seq2seq.language_model import LanguageModel
from seq2seq.timebatched import StepLinear, step_layers, swap_in_step_linears
from tests.test_model import VARIANTS, random_batch


def gradients(model: nn.Module, batches: list[tuple[torch.Tensor, ...]], *, bf16: bool = False) -> dict[str, torch.Tensor]:
    """Every parameter's gradient, summed over the batches' backward passes (as micro-batches add up)."""
    model.zero_grad(set_to_none=True)
    for src, src_lens, tgt_in in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(src, src_lens, tgt_in)
        logits.float().log_softmax(-1)[..., 3].sum().backward()
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


def assert_same(taken: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Equal up to fp32 rounding: the sums run in another order, so each tensor is compared as a whole, by norm."""
    assert taken.keys() == expected.keys()
    for name, tensor in expected.items():
        assert (taken[name] - tensor).norm() <= 1e-5 * tensor.norm() + 1e-12, name


@pytest.mark.parametrize(("cell", "attention", "layers", "input_feeding"), VARIANTS)
def test_the_gradients_are_the_plain_ones(make_model, cell: str, attention: str, layers: int, input_feeding: bool) -> None:
    plain = make_model(src_vocab=17, tgt_vocab=23, attention=attention, layers=layers, input_feeding=input_feeding,
                       cell=cell, scale=0.5)
    swapped = swap_in_step_linears(copy.deepcopy(plain))
    batches = [random_batch(4, vocab=17, seed=seed) for seed in (1, 2)]  # two passes add up into one gradient
    assert_same(gradients(swapped, batches), gradients(plain, batches))


def test_updated_weights_are_used_by_the_next_pass(make_model) -> None:
    """The cast of the weight the steps share is made anew once the optimizer has changed the weight, even after a
    pass whose backward never ran (a step abandoned half-way, say for lack of memory, and retried)."""
    plain = make_model(src_vocab=17, tgt_vocab=23, layers=2, scale=0.5)
    swapped = swap_in_step_linears(copy.deepcopy(plain))
    batch = random_batch(4, vocab=17, seed=3)
    for model in (plain, swapped):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):
            gradients(model, [batch])
            model(*batch)  # abandoned: no backward
            optimizer.step()
        model.final_gradients = gradients(model, [batch])
    assert_same(swapped.state_dict(), plain.state_dict())
    assert_same(swapped.final_gradients, plain.final_gradients)


def test_bf16_gradients_are_closer_to_fp32_than_plain_bf16s(make_model) -> None:
    """In bf16, plain autograd sums the steps' weight gradients in bf16; one product sums them in fp32."""
    plain = make_model(src_vocab=17, tgt_vocab=23, hidden_dim=64, scale=0.5)
    swapped = swap_in_step_linears(copy.deepcopy(plain))
    batches = [random_batch(16, vocab=17, seed=4, max_len=30)]
    exact = gradients(plain, batches)
    plain_bf16, swapped_bf16 = gradients(plain, batches, bf16=True), gradients(swapped, batches, bf16=True)
    weight = "cells.0.hidden_map.weight"
    plain_error = (plain_bf16[weight] - exact[weight]).norm() / exact[weight].norm()
    swapped_error = (swapped_bf16[weight] - exact[weight]).norm() / exact[weight].norm()
    assert swapped_error < plain_error, (swapped_error, plain_error)


def test_the_swap_keeps_parameters_and_the_state_dict_and_changes_no_output(make_model) -> None:
    model = make_model(src_vocab=17, tgt_vocab=23, layers=2)
    before = dict(model.named_parameters())
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    src, src_lens, tgt_in = random_batch(4, vocab=17, seed=5)
    with torch.no_grad():
        expected = model(src, src_lens, tgt_in)
    swap_in_step_linears(model)
    assert step_layers(model) == ["cells.0.hidden_map", "cells.1.input_map", "cells.1.hidden_map", "feed_map",
                                  "attention.query_map", "combine"], "the first input map runs once over all steps"
    assert all(type(model.get_submodule(name)) is StepLinear for name in step_layers(model))
    assert type(model.cells[0].input_map) is nn.Linear and type(model.out) is nn.Linear
    assert dict(model.named_parameters()) == before, "the very same Parameter objects"
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items())
    with torch.no_grad():
        torch.testing.assert_close(model(src, src_lens, tgt_in), expected, rtol=0, atol=0)
    torch.testing.assert_close(model(src, src_lens, tgt_in), expected, rtol=1e-6, atol=1e-6)  # autograd on


def test_a_language_models_gradients_are_the_plain_ones() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(emb_dim=16, hidden_dim=32, layers=2, embedding_dropout=0.0, layer_dropout=0.0, output_dropout=0.0)
    plain = LanguageModel.from_config(cfg, 23, 23).train()
    swapped = swap_in_step_linears(copy.deepcopy(plain))
    assert step_layers(swapped) == ["cells.0.hidden_map", "cells.1.input_map", "cells.1.hidden_map"]
    batches = [random_batch(4, vocab=23, seed=6)]
    assert_same(gradients(swapped, batches), gradients(plain, batches))
