"""CPU speed-ups swapped in for translation compute what the plain layers and torch.topk compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seq2seq.config import SearchConfig
from seq2seq.search import torch_top_k
from seq2seq.speedups import BLOCKS_FROM, FEW_ROWS, WIDE_OUTPUTS, FewRowsLinear, blocked_top_k, swap_in_few_rows_products
from seq2seq.tokenizer import EOS_ID
from seq2seq.translation import search_batch
from seq2seq.translator import Translator
from tests.test_model import random_batch
from tests.test_search import random_model, random_sources


def few_rows_copy(layer: nn.Linear) -> FewRowsLinear:
    return swap_in_few_rows_products(nn.Sequential(layer))[0]


@pytest.mark.parametrize("rows", [1, 5, FEW_ROWS, FEW_ROWS + 1])
@pytest.mark.parametrize("bias", [True, False])
def test_few_rows_linear_equals_the_layer(rows: int, bias: bool) -> None:
    torch.manual_seed(rows)
    layer, x = nn.Linear(24, WIDE_OUTPUTS, bias=bias), torch.randn(rows, 24)
    with torch.inference_mode():
        expected = layer(x)
        taken = few_rows_copy(layer)(x)
    torch.testing.assert_close(taken, expected)
    if rows > 1:  # the swapped product comes back as a transposed view: this checks which path was taken
        assert taken.is_contiguous() == (rows > FEW_ROWS)


def test_few_rows_linear_leaves_training_autocast_and_other_dtypes_to_the_plain_product() -> None:
    layer, x = nn.Linear(24, WIDE_OUTPUTS), torch.randn(5, 24)
    swapped = few_rows_copy(layer)
    assert swapped(x).is_contiguous(), "with autograd on, as in training, the plain product"
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 search: fp32 states, bf16 products
        taken = swapped(x)
        assert taken.is_contiguous(), "under autocast, the plain product (the swap ran at half speed there)"
        torch.testing.assert_close(taken, layer(x), rtol=0, atol=0)
    swapped = swapped.bfloat16()
    with torch.inference_mode():
        torch.testing.assert_close(swapped(x.bfloat16()), F.linear(x.bfloat16(), swapped.weight, swapped.bias), rtol=0, atol=0)


def test_the_swap_keeps_parameters_ties_and_the_state_dict(make_model) -> None:
    model = make_model(src_vocab=17, tgt_vocab=WIDE_OUTPUTS, emb_dim=32, hidden_dim=32, tie_output=True)
    before = {name: param for name, param in model.named_parameters()}
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    swap_in_few_rows_products(model)
    assert type(model.out) is FewRowsLinear, "the 2,048-wide output layer"
    assert type(model.combine) is nn.Linear, "a 32-wide layer stays as it is"
    assert model.out.weight is model.tgt_embed.weight, "still tied"
    assert {name: param for name, param in model.named_parameters()} == before, "the very same Parameter objects"
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items())


def test_search_steps_of_a_wide_model_take_the_swapped_products_and_match_the_layers(make_model, monkeypatch) -> None:
    # 2 layers of 512 units: the gates (4 x 512 outputs) and the 2,048-piece vocabulary are wide enough
    model = make_model(src_vocab=17, tgt_vocab=WIDE_OUTPUTS, hidden_dim=WIDE_OUTPUTS // 4, layers=2, scale=0.2)
    src, src_lens, tgt_in = random_batch(3, vocab=17, seed=4)
    memory, state = model.encode(src, src_lens)
    with torch.inference_mode():
        own, _ = model.decode_step(tgt_in[:, 0], state, memory)
    swap_in_few_rows_products(model)

    swapped_weights = []  # the swap passes the weight first, with the input's rows as its last dimension
    for name in ("mm", "addmm"):
        product = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *args, product=product: swapped_weights.append(tuple(args[-2].shape))
                            or product(*args))
    with torch.inference_mode():
        swapped, _ = model.decode_step(tgt_in[:, 0], state, memory)

    torch.testing.assert_close(swapped, own, rtol=0, atol=1e-5)
    gates, hidden = WIDE_OUTPUTS, WIDE_OUTPUTS // 4
    assert sorted(swapped_weights) == sorted([
        (gates, 16),              # the first layer's input map (embeddings of 16)
        (gates, hidden),          # input feeding
        (gates, hidden),          # the first layer's hidden map
        (gates, hidden),          # the second layer's input map
        (gates, hidden),          # the second layer's hidden map
        (WIDE_OUTPUTS, hidden),   # the output layer
    ])


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize(("rows", "width"), [(3, 8000), (320, 8000), (320, 8003), (64, 3000), (40, 32000)])
def test_top_k_by_blocks_is_torch_topk(rows: int, width: int, k: int) -> None:
    torch.manual_seed(rows + width)
    scores = F.log_softmax(torch.randn(rows, width) * 4, dim=-1)
    scores[:, [0, 2]] = float("-inf")             # barred tokens
    scores[0] = float("-inf")                     # a finished row: its one continuation is EOS at no cost
    scores[0, EOS_ID] = 0.0
    scores[-1, -1] = 5.0                          # a best score in the columns after the last whole block
    values, columns = blocked_top_k(scores, k)
    expected_values, expected_columns = scores.topk(k, dim=-1)
    assert torch.equal(values, expected_values)
    assert torch.equal(columns[1:], expected_columns[1:])  # distinct values: the same columns
    assert columns[0, 0] == EOS_ID and bool(((columns >= 0) & (columns < width)).all())


def test_beam_search_through_blocks_finds_what_torch_topk_finds() -> None:
    """A batch big enough for the blocks (64 sentences x 5 beams x 3,000 target ids) gives the same
    hypotheses as with torch.topk throughout."""
    model = random_model(seed=6, tgt_vocab=3000)
    sources = random_sources(64, seed=6)
    config = SearchConfig(beam_size=5, length_penalty=0.0)
    assert 64 * 5 * 3000 >= BLOCKS_FROM
    blocks = search_batch(model, sources, config, top_k=blocked_top_k)
    plain = search_batch(model, sources, config, top_k=torch_top_k)
    assert [hyps[0].tokens for hyps in blocks] == [hyps[0].tokens for hyps in plain]
    assert [hyps[0].score for hyps in blocks] == pytest.approx([hyps[0].score for hyps in plain], abs=1e-6)
    assert len({len(hyps[0].tokens) for hyps in blocks}) > 3, "outputs of many lengths"


def test_a_cpu_translator_swaps_the_speed_ups_in_and_int8_leaves_the_model_alone(make_model, tokenizers) -> None:
    vocab = tokenizers.tgt.vocab_size
    model = make_model(src_vocab=vocab, tgt_vocab=vocab)
    wide = Translator(model, tokenizers, device="cpu")
    assert wide.model is model and wide._top_k is blocked_top_k
    model = make_model(src_vocab=vocab, tgt_vocab=vocab)
    quantized = Translator(model, tokenizers, SearchConfig(quantize="int8"), device="cpu")
    assert quantized.model is not model
    assert not any(isinstance(layer, FewRowsLinear) for layer in model.modules()), "the model itself is left as it is"
