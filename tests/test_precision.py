"""bf16 autocast: the matrix products run in bf16, while the weights, the loss and the scores stay fp32."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from seq2seq import devices
from seq2seq.config import Config, SearchConfig, TrainConfig
from seq2seq.data import Example, collate
from seq2seq.errors import ConfigError
from seq2seq.optim import build_optimizer
from seq2seq.training import update
from seq2seq.translation import search_batch, translate


def _batch() -> object:
    return collate([Example([5, 6, 7, 3], [8, 9, 10]), Example([11, 12, 3], [13, 14])])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_update_keeps_fp32_weights_and_a_finite_loss(make_model, precision: str) -> None:
    model = make_model().train()
    settings = TrainConfig(precision=precision)
    loss, grad_norm, finite = update(model, build_optimizer(model.parameters(), settings), _batch(), settings)
    assert finite and loss > 0 and grad_norm > 0
    assert all(param.dtype == torch.float32 for param in model.parameters())


def test_bf16_loss_is_close_to_fp32_and_not_identical(make_model) -> None:
    losses = {}
    for precision in ("fp32", "bf16"):
        model = make_model(seed=3).train()
        torch.manual_seed(0)
        settings = TrainConfig(precision=precision, lr=1e-9)
        losses[precision], _, _ = update(model, build_optimizer(model.parameters(), settings), _batch(), settings)
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)
    assert losses["bf16"] != losses["fp32"], "autocast had no effect"


@pytest.mark.skipif(not devices.has_bf16_units(torch.device("cpu")), reason="this CPU has no bf16 units, so bf16 search is refused here")
def test_bf16_search_returns_fp32_scores_for_every_sentence(make_model) -> None:
    model = make_model(scale=0.5)
    found = search_batch(model, [[5, 6, 7], [8, 9], [10, 11, 12, 13]], SearchConfig(beam_size=3, precision="bf16"))
    assert len(found) == 3 and all(hyps and isinstance(hyps[0].score, float) and hyps[0].score <= 0 for hyps in found)


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ConfigError, match="precision"):
        Config(train=TrainConfig(precision="fp16")).validate()


NO_BF16_UNITS = {"avx2": True, "avx512_f": True, "avx512_bf16": False, "amx_bf16": False}
REFUSAL = "bf16 needs bf16 units and this CPU has none"


@pytest.mark.parametrize("units", ["avx512_bf16", "amx_bf16", "bf16", "sve_bf16"])
def test_a_cpu_with_bf16_units_may_use_bf16(monkeypatch: pytest.MonkeyPatch, units: str) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {**NO_BF16_UNITS, units: True})
    devices.require_bf16_units(torch.device("cpu"))


def test_bf16_search_on_a_cpu_without_bf16_units_is_refused_and_fp32_is_not(
    make_model, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: NO_BF16_UNITS)
    model = make_model()
    with pytest.raises(ConfigError, match=f"{REFUSAL}.*use --precision fp32"):
        search_batch(model, [[5, 6, 7]], SearchConfig(beam_size=2, precision="bf16"))
    assert search_batch(model, [[5, 6, 7]], SearchConfig(beam_size=2, precision="fp32"))


@pytest.mark.parametrize("native", [True, False])
def test_a_gpu_may_use_bf16_only_with_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    if native:
        devices.require_bf16_units(torch.device("cuda"))
    else:
        with pytest.raises(ConfigError, match="bf16 needs bf16 units and this GPU has none"):
            devices.require_bf16_units(torch.device("cuda"))


def test_translating_in_bf16_without_bf16_units_is_refused_before_the_first_line_is_read(
    make_model, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: NO_BF16_UNITS)

    def lines() -> Iterator[str]:
        raise AssertionError("a line was read")
        yield ""

    with pytest.raises(ConfigError, match=REFUSAL):
        translate(make_model(), None, lines(), SearchConfig(precision="bf16"))
