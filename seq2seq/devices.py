"""Where a model runs: the CPU, or a CUDA GPU when one is asked for or (auto) available."""

from __future__ import annotations

import torch

from seq2seq.config import DEVICES
from seq2seq.errors import ConfigError

# CPU features (names of `torch.cpu.get_capabilities()`, x86 then Arm) that compute bf16 products in
# hardware. Without any of them torch emulates bf16.
BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


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


def has_bf16_units(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware rather than emulating it."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(feature) for feature in BF16_CPU_FEATURES)


def require_bf16_units(device: torch.device) -> None:
    """Refuse bf16 where `device` only emulates it. It runs slower than fp32 there, and where oneDNN was held
    to AVX2 it could not build the encoder's bf16 LSTM at all (bench/README.md)."""
    if has_bf16_units(device):
        return
    where = "this GPU has none" if device.type == "cuda" else "this CPU has none (AVX512-BF16, AMX or Arm BF16)"
    raise ConfigError(f"bf16 needs bf16 units and {where}: emulated, it would run slower than fp32; use --precision fp32")


def require_int8_units() -> None:
    """Refuse int8 on an x86 CPU without AVX2. torch's int8 products there (fbgemm) need AVX2 and would stop at the
    first product with "Your CPU does not support FBGEMM". Other architectures have their own int8 engine."""
    if torch.cpu.get_capabilities().get("avx2") is False:
        raise ConfigError("--quantize int8 needs AVX2 and this CPU has none (torch's int8 products require it); "
                          "use --quantize none")
