"""`seq2seq info`: what a model file holds, read without translating anything."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.console import help_epilog, user_errors

EPILOG = help_epilog("""\
\b
Examples:
  seq2seq info runs/de-en/best.pt
  seq2seq info runs/de-en/best.pt --json | jq .info.valid_bleu

The validation scores are those measured at the checkpoint's step (for best.pt, the best by
train.select_metric).""")


def info(
    model: Annotated[Path, typer.Argument(metavar="MODEL", show_default=False, help="Checkpoint (.pt) written by `seq2seq train`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")] = False,
) -> None:
    """Show a model file's settings, vocabularies, size, training step, validation scores and versions."""
    with user_errors():
        from seq2seq import config_toml, describe_checkpoint, load_checkpoint

        loaded = load_checkpoint(model)
        facts = describe_checkpoint(model, loaded)
        if as_json:
            typer.echo(json.dumps(facts, indent=2))
        else:
            _render(facts, config_toml(loaded.config))


def _render(facts: dict[str, Any], config_toml: str) -> None:
    """Aligned "label  value" lines, then the resolved config; plain text when stdout is not a terminal."""
    from rich.console import Console
    from rich.rule import Rule
    from rich.syntax import Syntax
    from rich.text import Text

    rows = _rows(facts)
    width = max(len(label) for label, _ in rows) + 2
    console = Console(highlight=False, soft_wrap=True)  # soft wrap: a long path or signature stays one line
    for label, value in rows:
        console.print(Text.assemble((label.ljust(width), "bold"), value))
    console.print(Rule("config (resolved)", style="dim"))
    console.print(Syntax(config_toml.rstrip(), "toml", background_color="default"))


def _rows(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) lines of the summary; info keys this version does not know are listed as they are."""
    record = dict(facts["info"])
    vocab = facts["vocabulary"]
    model = facts["config"]["model"]
    kind = "translation (encoder-decoder)" if not model["language_model"] else \
        "language model (a decoder alone: scores and continues target text; no source)"
    rows = [
        ("model file", facts["model"]),
        ("kind", f"{kind}, {model['cell'].upper()}, {model['layers']} x {model['hidden_dim']}"),
        ("training step", f"{facts['step']:,}"),
        ("parameters", f"{facts['parameters']:,}"),
        ("vocabulary", (f"{vocab['source']:,} pieces" + ("" if model["language_model"] else ", joint") if vocab["joint"]
                        else f"{vocab['source']:,} source pieces, {vocab['target']:,} target pieces")
         + (", byte fallback" if vocab["byte_fallback"] else ", unknown characters become <unk>")),
    ]
    for metric, label in METRIC_LABELS.items():
        if f"valid_{metric}" in record:
            rows.append((f"validation {label}", f"{record.pop(f'valid_{metric}'):.2f}"))
        if f"{metric}_signature" in record:
            rows.append((f"{label} signature", record.pop(f"{metric}_signature")))
    record.pop("valid_ppl", None)  # shown with the loss
    if "valid_loss" in record:
        loss = record.pop("valid_loss")
        rows.append(("validation loss", f"{loss:.4f} per token (perplexity {math.exp(min(loss, 50.0)):.2f})"))
    if "started_from" in record:  # a fine-tuned run's checkpoint
        rows.append(("fine-tuned from", started_from(record.pop("started_from"))))
    if facts["config"]["train"]["ema_decay"]:
        rows.append(("weights", f"moving average of the trained ones (train.ema_decay = {facts['config']['train']['ema_decay']})"))
    made_with = ", ".join(f"{name} {record.pop(name)}" for name in ("seq2seq", "torch") if name in record)
    rows.append(("made with", made_with or "unknown"))
    rows += [(key.replace("_", " "), str(value)) for key, value in record.items()]
    rows.append(("training state", "included (a run can resume from this file)" if facts["training_state"] else "none (weights only)"))
    return rows


def started_from(record: dict[str, Any]) -> str:
    """A fine-tuned run's model file as its checkpoints record it: "base/best.pt (step 1,000, validation BLEU 35.20)"."""
    label = METRIC_LABELS.get(record["metric"], record["metric"])
    score = f", validation {label} {record['score']:.2f}" if record.get("score") is not None else ""
    return f"{record['file']} (step {record['step']:,}{score})"


METRIC_LABELS = {"bleu": "BLEU", "chrf": "chrF", "ter": "TER", "wer": "WER", "cer": "CER", "exact": "exact match"}


def register(app: typer.Typer) -> None:
    app.command("info", epilog=EPILOG, no_args_is_help=True)(info)
