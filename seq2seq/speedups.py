"""CPU speed-ups for translation, swapped in when a model is made ready to translate (`seq2seq.translator`).

Each computes what the plain code computes (up to rounding), only faster on a CPU, so that `model.py`
and `search.py` can state the math alone:

- `FewRowsLinear` takes the place of the decoder's wide linear layers: a product of a few rows by a
  wide matrix runs as (W x^T)^T, which MKL computes two to three times faster in fp32.
- `blocked_top_k` takes the place of torch.topk in the search: it ranks only the columns of the
  highest-scoring blocks of a row.
- int8 weights (`seq2seq.int8`) are the third, chosen by the user (`--quantize int8`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seq2seq.search import TopK, torch_top_k

FEW_ROWS = 64         # up to here W x^T beat x W^T on this CPU; at 320 rows the two took the same time
WIDE_OUTPUTS = 2048   # layers with 2,048 and 8,000 outputs gained from the swap, 512-wide ones lost


class FewRowsLinear(nn.Linear):
    """`nn.Linear`; without autograd, for an fp32 input of a few rows on the CPU, computed as (W x^T)^T.

    For an fp32 product of a few rows by a wide matrix, MKL takes a slow path: beam search's 5 rows
    by the 8,000 x 512 output layer took 2.2-2.7 ms as x W^T and 0.9-1.4 ms as W x^T, the same
    product with the operands swapped (bench/README.md). Training (autograd on), bf16 autocast (whose
    inputs are still fp32: the swap ran at half speed there), other dtypes and devices, and batches
    of more rows take the layer's own product.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu" \
                or torch.is_autocast_enabled("cpu") or x.dim() != 2 or x.size(0) > FEW_ROWS:
            return F.linear(x, self.weight, self.bias)
        if self.bias is None:
            return torch.mm(self.weight, x.t()).t()
        return torch.addmm(self.bias.unsqueeze(1), self.weight, x.t()).t()


def swap_in_few_rows_products(model: nn.Module) -> nn.Module:
    """Make every plain linear layer of WIDE_OUTPUTS outputs or more a `FewRowsLinear`, in place, and return `model`.

    The new layers hold the very same parameters (a tied output layer stays tied to its embeddings),
    so the state dict, training and the numbers a layer computes are unchanged.
    """
    for name, layer in list(model.named_modules()):
        if type(layer) is nn.Linear and layer.out_features >= WIDE_OUTPUTS:
            swapped = FewRowsLinear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
            swapped.weight, swapped.bias = layer.weight, layer.bias
            owner, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(owner), attribute, swapped)
    return model


BLOCK = 64              # columns per block in `blocked_top_k`
BLOCKS_FROM = 16 * 8000  # scores (rows x columns) from which `blocked_top_k` goes through blocks: below, torch.topk was as fast or faster


def blocked_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`scores.topk(k, dim=-1)` for scores (rows, width): the k best of each row, best first, and their columns.

    On the CPU, torch.topk (and max with indices) over a row of 8,000 log-probabilities is slow:
    3.1 ms for beam search's 320 rows, against 0.2 ms for the rows' maxima alone (bench/README.md).
    So large score tables are cut into blocks of BLOCK columns: a row's k best scores lie in the k
    blocks with the highest maxima (a block holding one of them has a maximum at least that high,
    and another block with a higher maximum holds a better score), plus the columns left over after
    the last whole block. Only those k * BLOCK candidates are ranked. Ties may come out in another order.
    """
    rows, width = scores.shape
    blocks = width // BLOCK
    if scores.device.type != "cpu" or scores.numel() < BLOCKS_FROM or blocks < 8 * k:
        return torch_top_k(scores, k)
    body = scores[:, : blocks * BLOCK].view(rows, blocks, BLOCK)
    _, best_blocks = body.amax(dim=-1).topk(k, dim=-1)                                   # (rows, k)
    candidates = body.gather(1, best_blocks.unsqueeze(-1).expand(rows, k, BLOCK)).view(rows, -1)
    columns = (best_blocks.unsqueeze(-1) * BLOCK + torch.arange(BLOCK)).view(rows, -1)
    if width > blocks * BLOCK:
        candidates = torch.cat([candidates, scores[:, blocks * BLOCK :]], dim=1)
        columns = torch.cat([columns, torch.arange(blocks * BLOCK, width).expand(rows, -1)], dim=1)
    best, picked = candidates.topk(k, dim=-1)
    return best, columns.gather(1, picked)


def top_k_for(device: torch.device) -> TopK:
    """The search's top-k on `device`: by blocks on the CPU, torch's own elsewhere."""
    return blocked_top_k if device.type == "cpu" else torch_top_k
