"""int8 for translation: a faster copy, close to the fp32 model, independent of the batch, and the original untouched."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from seq2seq.config import Config, SearchConfig
from seq2seq.data import pad
from seq2seq.errors import ConfigError
from seq2seq.int8 import Int8Linear, input_ranges, quantized_int8
from seq2seq.model import DecoderState, Memory
from seq2seq.tokenizer import BOS_ID, EOS_ID
from seq2seq.translator import Translator

SOURCES = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16], [17, 5, 9]]


FP32 = "torch.nn.modules.linear.Linear"
INT8 = "seq2seq.int8.Int8Linear"
INT8_BY_BATCH = "torch.ao.nn.quantized.dynamic.modules.linear.Linear"  # torch's dynamic quantization


def _kind(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _linear_kinds(model: nn.Module, *, leave_out: str = "") -> set[str]:
    return {_kind(module) for name, module in model.named_modules() if name != leave_out and hasattr(module, "in_features")}


def test_every_linear_layer_holds_int8_weights_in_the_copy_only(make_model) -> None:
    """All but Bahdanau's energy layer, a product with one output column; the encoder stays fp32 too."""
    model = make_model()
    before = {name: param.clone() for name, param in model.state_dict().items()}
    copy = quantized_int8(model)
    assert _linear_kinds(copy, leave_out="attention.energy") == {INT8}
    assert type(copy.attention.energy) is nn.Linear and copy.attention.energy is not model.attention.energy
    assert type(copy.encoder) is nn.LSTM and copy.encoder is not model.encoder
    assert _linear_kinds(model) == {FP32}
    assert all(torch.equal(before[name], param) for name, param in model.state_dict().items())


def test_a_layer_whose_input_nothing_bounds_and_every_layer_on_arm_scale_by_batch(
    make_model, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The output layer behind a tied projection has no fixed range; Arm's int8 engine has no fixed-range product."""
    tied = quantized_int8(make_model(tie_output=True))  # emb_dim 16, hidden_dim 32: a projection feeds the output layer
    assert _kind(tied.out) == INT8_BY_BATCH and _kind(tied.out_proj) == INT8
    monkeypatch.setattr(torch.backends.quantized, "engine", "qnnpack")
    model = make_model()
    copy = quantized_int8(model)
    assert _linear_kinds(copy, leave_out="attention.energy") == {INT8_BY_BATCH}
    src, src_lens = pad([[*ids, EOS_ID] for ids in SOURCES])
    with torch.inference_mode():
        memory, state = copy.encode(src, src_lens)
        log_probs, _ = copy.decode_step(torch.full((len(SOURCES),), BOS_ID), state, memory)
    assert log_probs.isfinite().all()


def test_an_int8_layer_quantizes_each_row_on_its_own() -> None:
    """A row's product is the same alone and among others, and close to fp32's."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    rows = torch.rand(9, 64) * 2 - 1
    rows[3] *= 0.01  # a row far smaller than its neighbours: a shared scale would round it coarsely
    int8 = Int8Linear(linear, -1.0, 1.0)
    with torch.inference_mode():
        together, fp32 = int8(rows), linear(rows)
        alone = torch.cat([int8(rows[i : i + 1]) for i in range(len(rows))])
    assert torch.equal(together, alone)
    assert (together - fp32).abs().max() < 0.02


def test_an_int8_step_for_a_sentence_does_not_depend_on_the_rest_of_its_batch(make_model) -> None:
    """The same sentence's next-token log-probabilities, decoded with three others and alone."""
    model = quantized_int8(make_model(scale=0.3))
    src, src_lens = pad([[*ids, EOS_ID] for ids in SOURCES])
    tokens = torch.full((len(SOURCES),), BOS_ID)
    with torch.inference_mode():
        memory, state = model.encode(src, src_lens)
        together, _ = model.decode_step(tokens, state, memory)
        for row in range(len(SOURCES)):
            one = slice(row, row + 1)
            alone, _ = model.decode_step(tokens[one], DecoderState(*(part[one] for part in state)),
                                         Memory(*(part[one] for part in memory)))
            torch.testing.assert_close(alone, together[one], rtol=0, atol=1e-5)


@pytest.mark.parametrize("options", [
    {},
    {"cell": "gru", "attention": "luong-general", "layers": 2, "decoder_init": "last"},
    {"cell": "rnn", "attention": "none", "input_feeding": False, "decoder_init": "zeros"},
    {"attention": "luong-dot", "tie_output": True, "emb_dim": 32},
])
def test_every_int8_layer_input_stays_inside_its_fixed_range(make_model, options: dict) -> None:
    """The ranges are the architecture's own (tanh-bounded states, averages of them, the embedding table):
    translating with a wide, far from uniform model never leaves them."""
    model = make_model(scale=2.0, **options)
    copy = quantized_int8(model)
    ranges = input_ranges(model)
    seen: dict[str, tuple[float, float]] = {}

    def watch(name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor]) -> None:
            low, high = seen.get(name, (0.0, 0.0))
            seen[name] = (min(low, inputs[0].min().item()), max(high, inputs[0].max().item()))
        return record

    for name in ranges:
        copy.get_submodule(name).register_forward_pre_hook(watch(name))
    src, src_lens = pad([[*ids, EOS_ID] for ids in SOURCES])
    with torch.inference_mode():
        memory, state = copy.encode(src, src_lens)
        tokens = torch.full((len(SOURCES),), BOS_ID)
        for _ in range(4):
            log_probs, state = copy.decode_step(tokens, state, memory)
            tokens = log_probs.argmax(-1)
    assert seen.keys() == ranges.keys()
    for name, (low, high) in seen.items():
        assert ranges[name][0] - 1e-6 <= low and high <= ranges[name][1] + 1e-6, (name, (low, high), ranges[name])


@pytest.mark.parametrize("attention", ["bahdanau", "luong-general", "none"])
def test_int8_log_probabilities_stay_close_to_fp32(make_model, attention: str) -> None:
    """Teacher-forced next-token log-probabilities: int8 rounding moves them by a little, not by a broken layer.

    Inputs are rounded in steps of 1/63.5 over [-1, 1] whatever their own size. This tiny model's states
    are small, so its log-probabilities move by up to about 0.09 (a broken layer moves them by 1 or more).
    """
    model = make_model(attention=attention, scale=0.3)
    src, src_lens = pad([[*ids, EOS_ID] for ids in SOURCES])
    tokens = torch.full((len(SOURCES),), BOS_ID)
    results = []
    for variant in (model, quantized_int8(model)):
        with torch.inference_mode():
            memory, state = variant.encode(src, src_lens)
            log_probs, _ = variant.decode_step(tokens, state, memory)
            log_probs2, _ = variant.decode_step(log_probs.argmax(-1), _, memory)
        results.append(torch.cat([log_probs, log_probs2]))
    fp32, int8 = results
    assert (int8 - fp32).abs().max() < 0.15
    assert not torch.equal(int8, fp32), "quantization had no effect"


def test_translate_with_int8_leaves_the_given_model_as_it_was(make_model, tokenizers) -> None:
    model = make_model(src_vocab=tokenizers.src.vocab_size, tgt_vocab=tokenizers.tgt.vocab_size)
    lines = ["the cat sat", "", "a dog ran far away"]
    outputs = Translator(model, tokenizers, SearchConfig(beam_size=2, quantize="int8")).translate(lines)
    assert len(outputs) == 3 and outputs[1][0].text == ""
    assert _linear_kinds(model) == {FP32}


@pytest.mark.parametrize(("capabilities", "refused"), [
    ({"architecture": "x86_64", "avx": True, "avx2": False}, True),
    ({"architecture": "x86_64", "avx2": True}, False),
    ({"architecture": "aarch64", "asimd": True}, False),  # Arm has no avx2 key: its int8 engine is not fbgemm
])
def test_int8_on_an_x86_cpu_without_avx2_is_refused_before_the_first_line_is_read(
    make_model, tokenizers, monkeypatch: pytest.MonkeyPatch, capabilities: dict, refused: bool,
) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    model = make_model(src_vocab=tokenizers.src.vocab_size, tgt_vocab=tokenizers.tgt.vocab_size)
    read: list[str] = []

    def lines() -> Iterator[str]:
        read.append("the cat sat")
        yield "the cat sat"

    if refused:
        with pytest.raises(ConfigError, match="--quantize int8 needs AVX2 and this CPU has none"):
            Translator(model, tokenizers, SearchConfig(quantize="int8")).stream(lines())
        assert read == []
    else:
        assert len(list(Translator(model, tokenizers, SearchConfig(quantize="int8")).stream(lines()))) == 1


def test_int8_with_bf16_or_an_unknown_quantization_is_refused() -> None:
    with pytest.raises(ConfigError, match="leave search.precision at fp32"):
        Config(search=SearchConfig(quantize="int8", precision="bf16")).validate()
    with pytest.raises(ConfigError, match="search.quantize must be none or int8"):
        Config(search=SearchConfig(quantize="int4")).validate()
