"""int8 dynamic quantization for translation: a faster copy, close to the fp32 model, and the original untouched."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from seq2seq.config import Config, SearchConfig
from seq2seq.data import pad
from seq2seq.errors import ConfigError
from seq2seq.model import quantized_int8
from seq2seq.tokenizer import BOS_ID, EOS_ID
from seq2seq.translation import translate

SOURCES = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16], [17, 5, 9]]


def _linear_kinds(model: nn.Module, *, leave_out: str = "") -> set[str]:
    return {type(module).__module__ for name, module in model.named_modules()
            if type(module).__name__ == "Linear" and name != leave_out}


def test_every_linear_layer_and_the_encoder_hold_int8_weights_in_the_copy_only(make_model) -> None:
    """All but Bahdanau's energy layer, a product with one output column that stays fp32."""
    model = make_model()
    before = {name: param.clone() for name, param in model.state_dict().items()}
    copy = quantized_int8(model)
    assert _linear_kinds(copy, leave_out="attention.energy") == {"torch.ao.nn.quantized.dynamic.modules.linear"}
    assert type(copy.attention.energy) is nn.Linear and copy.attention.energy is not model.attention.energy
    assert type(copy.encoder).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert _linear_kinds(model) == {"torch.nn.modules.linear"} and type(model.encoder) is nn.LSTM
    assert all(torch.equal(before[name], param) for name, param in model.state_dict().items())


@pytest.mark.parametrize("attention", ["bahdanau", "luong-general", "none"])
def test_int8_log_probabilities_stay_close_to_fp32(make_model, attention: str) -> None:
    """Teacher-forced next-token log-probabilities: int8 rounding moves them by a little, not by a broken layer."""
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
    assert (int8 - fp32).abs().max() < 0.05
    assert not torch.equal(int8, fp32), "quantization had no effect"


def test_translate_with_int8_leaves_the_given_model_as_it_was(make_model, tokenizers) -> None:
    model = make_model(src_vocab=tokenizers.src.vocab_size, tgt_vocab=tokenizers.tgt.vocab_size)
    lines = ["the cat sat", "", "a dog ran far away"]
    outputs = list(translate(model, tokenizers, lines, SearchConfig(beam_size=2, quantize="int8")))
    assert len(outputs) == 3 and outputs[1][0].text == ""
    assert _linear_kinds(model) == {"torch.nn.modules.linear"}


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
            translate(model, tokenizers, lines(), SearchConfig(quantize="int8"))
        assert read == []
    else:
        assert len(list(translate(model, tokenizers, lines(), SearchConfig(quantize="int8")))) == 1


def test_int8_with_bf16_or_an_unknown_quantization_is_refused() -> None:
    with pytest.raises(ConfigError, match="leave search.precision at fp32"):
        Config(search=SearchConfig(quantize="int8", precision="bf16")).validate()
    with pytest.raises(ConfigError, match="search.quantize must be none or int8"):
        Config(search=SearchConfig(quantize="int4")).validate()
