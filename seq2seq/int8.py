"""int8 weights for CPU translation (`--quantize int8`): a quantized copy of a model, fp32 between the products.

On x86, every layer whose input range the architecture fixes (`input_ranges`) becomes an `Int8Linear`,
so that a sentence's translation does not depend on its batch. The encoder stays fp32 for the same
reason: torch's int8 LSTM scales its input by batch, and with it 1 test sentence in 10 still changed
between batch sizes; it runs once per sentence, so int8 bought it little. Any other linear layer, and
all of them on other int8 engines (Arm), quantize their input with one scale per product, as torch's
dynamic quantization does. Bahdanau's energy layer stays fp32: its input, one vector per beam and
source position, would be quantized anew at every step for a product of one output column.
"""

from __future__ import annotations

import warnings
from copy import deepcopy

import torch
from torch import nn

from seq2seq.model import Seq2Seq

FIXED_RANGE_ENGINES = ("x86", "fbgemm")  # torch's int8 engines with a product over a fixed input range (not Arm's)
INPUT_LEVELS = 127  # inputs are quantized to 0..127, not 0..255: the AVX2 kernels add pairs of u8 x s8 products
                    # in 16 bits, which 7-bit inputs cannot overflow (torch's dynamic quantization does the same)


class Int8Linear(nn.Module):
    """A linear layer with int8 weights whose input is quantized over a range fixed in advance.

    torch's dynamic quantization scales each product's input by the range of the whole batch, so a
    sentence's rounding, and sometimes its translation, depended on the sentences beside it: 126 of
    the 1,000 Multi30k test sentences came out differently at batch 64 and at batch 1 (bench/CHOICES.md).
    Over a fixed range, each row is quantized on its own. The weights are quantized as torch does it:
    one symmetric scale for the layer.
    """

    def __init__(self, linear: nn.Linear, low: float, high: float) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        weight_scale = max(weight.abs().max().item() / 127.5, torch.finfo(torch.float32).eps)
        bias = linear.bias.detach() if linear.bias is not None else None
        self.packed = torch.ops.quantized.linear_prepack(torch.quantize_per_tensor(weight, weight_scale, 0, torch.qint8), bias)
        low, high = min(low, 0.0), max(high, 0.0)
        self.input_scale = max(high - low, torch.finfo(torch.float32).eps) / INPUT_LEVELS
        self.input_zero_point = round(-low / self.input_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            x, self.input_scale, self.input_zero_point, self.packed)


def input_ranges(model: Seq2Seq) -> dict[str, tuple[float, float]]:
    """The range every linear layer's input keeps to in inference, where the architecture fixes it.

    Hidden states and the encoder's outputs come out of tanh or an LSTM's o * tanh(c); attention
    contexts are weighted averages of encoder outputs; attentional vectors come out of tanh. All lie
    in [-1, 1]. The first layer reads target embeddings, inside the table's own range. Left out:
    Bahdanau's energy layer, and the output layer when a projection feeds it (a tied output layer of
    another width), since nothing bounds the projection's output.
    """
    unit = (-1.0, 1.0)
    embeddings = model.tgt_embed.weight
    ranges = {"cells.0.input_map": (embeddings.min().item(), embeddings.max().item())}
    ranges |= {f"cells.{layer}.input_map": unit for layer in range(1, model.layers)}
    ranges |= {f"cells.{layer}.hidden_map": unit for layer in range(model.layers)}
    ranges |= dict.fromkeys(("bridge", "feed_map", "attention.key_map", "attention.query_map", "combine", "out_proj"), unit)
    if not hasattr(model, "out_proj"):
        ranges["out"] = unit
    present = dict(model.named_modules())
    return {name: span for name, span in ranges.items() if name in present}


def quantized_int8(model: Seq2Seq) -> Seq2Seq:
    """A copy for CPU inference whose linear layers hold int8 weights; `model` is left as it is.

    torch marks `torch.ao.quantization` as deprecated in favour of torchao (not a dependency here);
    its notices are silenced because the user chose int8 and cannot act on them.
    """
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    quantized = deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if torch.backends.quantized.engine in FIXED_RANGE_ENGINES:
            for name, (low, high) in input_ranges(quantized).items():
                owner, _, attribute = name.rpartition(".")
                setattr(quantized.get_submodule(owner), attribute, Int8Linear(quantized.get_submodule(name), low, high))
        # By type, then by name: a module named with None is left as it is.
        plan = {nn.Linear: default_dynamic_qconfig, "attention.energy": None}
        return quantize_dynamic(quantized, plan, dtype=torch.qint8, inplace=True)
