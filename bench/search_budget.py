"""Where translation's time goes: each product of the decoder step, the rest of the step, the search
around it and the encoder, per sentence; and what a target speed would leave for each.

    python bench/search_budget.py --model runs/de-en/best.pt --quantize int8 --target 145

Products are timed one by one (forward hooks on the translating model's linear and LSTM layers, the
swapped-in few-rows and int8 layers among them), each with its multiply-adds, so that a layer's rate can be set against
what the CPU does alone. The timers add a little to the step; compare parts, not the total, with
`translate_speed.py`. With --target (sentences/s), the last lines show that target's time per
sentence beside the products' share at the rates measured here.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import torch
from torch import nn

import seq2seq
import seq2seq.translation


class Clock:
    """Seconds and calls per name; `products` also counts multiply-adds."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.macs: collections.Counter[str] = collections.Counter()

    def wrap(self, name: str, function):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1
        return timed


def _is_product(module: nn.Module) -> bool:
    """A linear layer (fp32, `FewRowsLinear`, `Int8Linear` or torch's dynamic int8) or the encoder's RNN (always fp32)."""
    return hasattr(module, "in_features") or isinstance(module, nn.RNNBase)


def instrument(model: nn.Module, clock: Clock) -> None:
    """Time every product layer of `model`, the decoder step and the encoder."""
    names = {module: name for name, module in model.named_modules()}
    starts: dict[nn.Module, float] = {}

    def before(module, inputs):
        starts[module] = time.perf_counter()

    def after(module, inputs, output):
        if module in starts:
            _count(clock, names[module], module, inputs[0], time.perf_counter() - starts.pop(module))

    for module in names:
        if _is_product(module) and module is not model:
            module.register_forward_pre_hook(before)
            module.register_forward_hook(after)
    model.decode_step = clock.wrap("decoder step", model.decode_step)
    model.encode = clock.wrap("encoder (whole)", model.encode)
    for search in ("beam_search", "greedy_search"):
        setattr(seq2seq.translation, search, clock.wrap("search", getattr(seq2seq.translation, search)))


def _count(clock: Clock, name: str, module: nn.Module, x, seconds: float) -> None:
    name = f"product: {name}"
    clock.seconds[name] += seconds
    clock.calls[name] += 1
    if hasattr(module, "in_features") and isinstance(x, torch.Tensor):
        clock.macs[name] += x.numel() // module.in_features * module.in_features * module.out_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/multi30k")
    parser.add_argument("--sentences", type=int, default=1000, help="the first N of test_2016_flickr")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--quantize", choices=["none", "int8"], default="none")
    parser.add_argument("--target", type=float, help="sentences/s to budget for")
    args = parser.parse_args()
    seq2seq.reuse_freed_memory()  # as `seq2seq translate` does
    translator = seq2seq.load(args.model, device="cpu", beam_size=args.beam, batch_size=args.batch, quantize=args.quantize)
    sources = seq2seq.read_lines(args.data / "test_2016_flickr.de.gz")[: args.sentences]
    translator.translate(sources[: args.batch])  # warm up, untimed
    clock = Clock()
    instrument(translator.model, clock)
    start = time.perf_counter()
    translator.translate(sources, chunk_lines=8 * args.batch)
    wall = time.perf_counter() - start

    per_sentence = {name: seconds * 1e3 / len(sources) for name, seconds in clock.seconds.items()}
    products = [name for name in per_sentence if name.startswith("product: ")]
    encoder_products = [name for name in products if name.removeprefix("product: ").startswith("encoder")]
    step_products = sum(per_sentence[name] for name in products if name not in encoder_products
                        and not name.endswith("key_map") and not name.endswith("bridge"))
    print(f"{len(sources)} sentences, beam {args.beam}, batch {args.batch}, {args.quantize}: "
          f"{len(sources) / wall:.1f} sentences/s, {wall * 1e3 / len(sources):.2f} ms a sentence; "
          f"{clock.calls['decoder step']} decoder steps")
    print("| part | ms a sentence | calls | GMAC/s |")
    print("|---|---|---|---|")
    for name in sorted(products, key=per_sentence.get, reverse=True):
        rate = f"{clock.macs[name] / clock.seconds[name] / 1e9:.0f}" if clock.macs[name] else ""
        print(f"| {name} | {per_sentence[name]:.3f} | {clock.calls[name]} | {rate} |")
    step, whole_search = per_sentence["decoder step"], per_sentence["search"]
    parts = {"decoder step: its products": step_products, "decoder step: the rest": step - step_products,
             "search around the step": whole_search - step, "encoder (whole)": per_sentence["encoder (whole)"],
             "everything else (tokenizing, batching, detokenizing)":
                 wall * 1e3 / len(sources) - whole_search - per_sentence["encoder (whole)"]}
    for name, ms in parts.items():
        print(f"| {name} | {ms:.3f} | | |")
    if args.target:
        budget = 1e3 / args.target
        print(f"\n{args.target:g} sentences/s leaves {budget:.2f} ms a sentence; the step's products take "
              f"{step_products:.2f} ms at these rates, everything else now {wall * 1e3 / len(sources) - step_products:.2f} ms "
              f"and would have to fit in {budget - step_products:.2f} ms.")


if __name__ == "__main__":
    main()
