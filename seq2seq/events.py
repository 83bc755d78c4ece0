"""What training reports while it runs: typed events, handed to a callback (the CLI draws them; a script may log them).

A run reports `Preparing` stages, then `DataReady` once, then `StepsDone` every train.log_every updates,
`Validated` after each validation, `NonFinite` for each skipped update, `ThreadsChanged` when torch's thread
count follows the cores other programs leave free (train.threads = 0, on a CPU: `seq2seq.cores`), and `Finished` last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seq2seq.cores import ThreadsChanged
from seq2seq.data import FilterStats

LIMITS = ("max_steps", "max_time")
COMPLETE = (*LIMITS, "patience")  # the run ended as its settings asked: validated and saved


@dataclass(frozen=True)
class Preparing:
    """A stage of the start, before the first update: on 1M pairs the start takes from 20 s to over a minute."""

    stage: str   # "tokenizer" (trained, or taken from the cache), "encoding" or "planning"
    pairs: int   # the training pairs it works on


@dataclass(frozen=True)
class DataReady:
    train: FilterStats
    valid_pairs: int
    src_vocab: int
    tgt_vocab: int
    parameters: int
    batches_per_epoch: int       # one for each update (of train.accumulate micro-batches)
    resumed_step: int    # the step a resumed run continues after; 0 for a new run
    cached_tokenizers: tuple[Path, ...] = ()  # tokenizer files taken from the cache instead of trained
    replaced_unfinished: tuple[str, ...] = ()  # files left by an earlier start that saved no checkpoint, now replaced
    started_from: dict[str, Any] | None = None  # fine-tuning: the model file's path ("file"), "step", "metric" and "score"
    language_model: bool = False  # the text is target lines alone, read by a language model
    threads: int = 0  # torch's CPU threads at the first update (0 on a GPU)


@dataclass(frozen=True)
class StepsDone:
    step: int
    epoch: int
    loss: float          # training loss per target token over the last `log_every` steps
    grad_norm: float     # mean global gradient norm before clipping, over the same steps
    grad_norm_max: float
    clipped: int         # how many of those steps were rescaled to clip_norm
    skipped: int         # steps whose loss or gradient was not finite (no update made)
    tokens_per_s: float  # target tokens per second of wall clock (all ranks together), validation excluded
    elapsed: float       # seconds trained, all sessions of a resumed run together


@dataclass(frozen=True)
class NonFinite:
    step: int
    loss: float
    grad_norm: float
    in_a_row: int        # updates skipped in a row; training stops at train.max_nonfinite


@dataclass(frozen=True)
class Validated:
    step: int
    loss: float                    # cross-entropy per target token (no label smoothing)
    perplexity: float
    scores: dict[str, float]       # train.valid_metrics of the detokenized outputs: "bleu" -> 23.4, "wer" -> ...
    signatures: dict[str, str]     # each metric's signature (what was counted, sacrebleu's version)
    metric: str                    # train.select_metric: what `is_best` compares
    is_best: bool
    elapsed: float
    examples: tuple[tuple[str, str, str], ...] = ()  # a few (source, reference, output) lines, to read

    @property
    def score(self) -> float:
        """The selected metric's value (the loss, when that is selected)."""
        return self.loss if self.metric == "loss" else self.scores[self.metric]


@dataclass(frozen=True)
class Finished:
    """How a run ended. "max_steps", "max_time" and "patience" (train.patience validations without a new
    best score): validated and saved. A reason `should_stop` gave
    ("interrupted", "terminated"): last.pt saved at that step, without validating. "non_finite":
    train.max_nonfinite updates in a row were skipped (or the weights went NaN); nothing was saved
    at the end, so best.pt and last.pt are the last ones with finite weights."""

    step: int
    reason: str
    best_path: Path
    last_path: Path
    best: dict[str, float]   # best.pt's validation: its loss and every metric computed ({} before any validation)
    metric: str              # train.select_metric, which chose it
    elapsed: float


Event = Preparing | DataReady | StepsDone | NonFinite | Validated | ThreadsChanged | Finished
Report = Callable[[Event], None]
