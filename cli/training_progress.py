"""Training progress on stderr: a live rich bar on a terminal, plain log lines otherwise (see cli.progress)."""

from __future__ import annotations

import math
from types import TracebackType

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cli.console import err, say
from cli.info import started_from
from seq2seq import (COMPLETE, DataReady, Event, Finished, NonFinite, Preparing, StepsDone, ThreadsChanged, TrainConfig,
                     Validated)

BAR_UNITS = 1000  # the bar tracks whichever limit (steps or minutes) is nearer
STAGES = {
    "tokenizer": "preparing the tokenizer ({pairs:,} pairs)",
    "encoding": "encoding {pairs:,} pairs",
    "planning": "planning batches ({pairs:,} pairs)",
}


class TrainingReporter:
    """Renders the library's training events; use as a context manager around `train`."""

    def __init__(self, settings: TrainConfig, *, quiet: bool) -> None:
        self.settings, self.quiet = settings, quiet
        self.live = err.is_terminal and not quiet
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=err, redirect_stdout=False, redirect_stderr=False, disable=not self.live,
        )
        self.task = self.progress.add_task("starting", total=BAR_UNITS)

    def __enter__(self) -> TrainingReporter:
        self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        if self.quiet:
            return
        if isinstance(event, Preparing):
            line = STAGES[event.stage].format(pairs=event.pairs)
            self.progress.update(self.task, description=line)
            if not self.live:
                say(line)
        elif isinstance(event, DataReady):
            stats = event.train
            if event.replaced_unfinished:
                say(f"replacing {', '.join(event.replaced_unfinished)}: left by an earlier start that saved no checkpoint")
            if event.cached_tokenizers:
                say(f"tokenizer: from the cache ({', '.join(map(str, event.cached_tokenizers))}), trained there before "
                    "on the same lines and settings")
            per_update = f" ({self.settings.accumulate} batches each)" if self.settings.accumulate > 1 else ""
            units, vocabulary = (("lines", f"{event.tgt_vocab:,}") if event.language_model
                                 else ("pairs", f"{event.src_vocab:,} source / {event.tgt_vocab:,} target"))
            say(f"data: {stats.kept:,} training {units} ({stats.empty:,} empty and {stats.too_long:,} too long skipped), "
                f"{event.valid_pairs:,} validation {units}; vocabulary {vocabulary}; "
                f"{event.parameters:,} parameters; {event.batches_per_epoch:,} updates an epoch{per_update}")
            if event.started_from:
                say(f"fine-tuning {started_from(event.started_from)}: its weights and tokenizers, a new optimizer, "
                    "schedule and step count")
            if event.threads:
                say(f"CPU threads: {event.threads}" + (" (train.threads)" if self.settings.threads else
                    " (fewer while other programs take cores; train.threads = N pins N)"))
            if event.resumed_step:
                say(f"resuming after step {event.resumed_step:,} with the run's own tokenizers, optimizer state and RNG")
            if self.settings.ema_decay:
                say(f"validation and checkpoints use the moving average of the weights (train.ema_decay = "
                    f"{self.settings.ema_decay}); last.pt also keeps the trained weights, to resume from")
        elif isinstance(event, StepsDone):
            line = (f"step {event.step:,} epoch {event.epoch} | loss {event.loss:.3f} | grad norm {event.grad_norm:.2f} "
                    f"(max {event.grad_norm_max:.2f}, {event.clipped} clipped) | {event.tokens_per_s:,.0f} tgt tok/s")
            if event.skipped:
                line += f" | {event.skipped} non-finite steps skipped"
            self.progress.update(self.task, description=line, completed=self._fraction(event) * BAR_UNITS)
            if not self.live:
                say(line)
        elif isinstance(event, NonFinite):
            say(f"step {event.step:,}: loss {event.loss:.3g}, gradient norm {event.grad_norm:.3g}: not finite, update "
                f"skipped ({event.in_a_row} in a row; training stops at {self.settings.max_nonfinite})")
        elif isinstance(event, ThreadsChanged):
            say(f"other programs are using {event.others:.1f} of {event.cores} cores: training on {event.threads} "
                f"CPU thread{'s' if event.threads > 1 else ''} (was {event.was})")
        elif isinstance(event, Validated):
            scores = "".join(f" | {_label(name)} {value:.2f}" for name, value in event.scores.items())
            averaged = " (averaged weights)" if self.settings.ema_decay else ""
            say(f"validation at step {event.step:,}{averaged}: loss {event.loss:.3f} | ppl {event.perplexity:.2f}{scores}"
                f"{f' (best {_label(event.metric)})' if event.is_best else ''}")
            for source, reference, output in event.examples:
                say(f"  source {source!r}\n  reference {reference!r}\n  output {output!r}")
        elif isinstance(event, Finished) and event.reason not in COMPLETE:
            self.stop()  # an interrupted or diverged run: the command says how, in one line, quiet or not
        elif isinstance(event, Finished):
            self.progress.update(self.task, completed=BAR_UNITS)
            self.stop()
            best = ", ".join(f"{_label(name)} {value:.2f}" for name, value in event.best.items() if name != "ppl")
            if event.metric == "loss" and "ppl" in event.best:
                best += f" (perplexity {event.best['ppl']:.2f})"
            if "exact" in event.best:  # a word per line (G2P, transliteration): the word error rate is the lines missed
                best += f" (word error rate {100 - event.best['exact']:.2f}%: lines not exactly right)"
            say(f"finished after {event.step:,} steps ({event.reason.replace('_', ' ')}, {event.elapsed / 60:.1f} min); "
                f"best validation by {_label(event.metric)}: {best}; best checkpoint {event.best_path}; last {event.last_path}")

    def _fraction(self, event: StepsDone) -> float:
        fractions = [0.0]
        if self.settings.max_steps:
            fractions.append(event.step / self.settings.max_steps)
        if self.settings.max_time:
            fractions.append(event.elapsed / (60 * self.settings.max_time))
        return min(1.0, max(fractions)) if not math.isnan(event.loss) else 0.0


def _label(metric: str) -> str:
    """How a metric is named in the log: BLEU, chrF, TER, WER, CER, exact, loss."""
    return {"chrf": "chrF", "exact": "exact", "loss": "loss"}.get(metric, metric.upper())
