"""Progress on stderr for translation: a live rich bar on a terminal, plain log lines otherwise.

The bar never touches stdout (no redirection), so the data written there is the same byte for byte
whether a bar is shown, plain lines are logged or `-q` silences both.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from cli.console import err, say

LOG_EVERY_S = 30.0  # without a terminal: one plain progress line at most this often


class _LinesPerSecond(ProgressColumn):
    """Throughput in lines a second (rich's own speed column counts bytes)."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.1f} lines/s" if task.speed else "", style="progress.data.speed")


class LineProgress:
    """Lines done of `total` (None when unknown, as on stdin): a bar with ETA on a terminal, else a line every `every_s`.

    Use as a context manager; call `advance()` after each line is written. Disabled, it shows nothing.
    """

    def __init__(self, total: int | None, *, enabled: bool, every_s: float | None = None,
                 verbs: tuple[str, str] = ("translating", "translated")) -> None:
        self.total, self.enabled, self.done = total, enabled, 0
        self.doing, self.did = verbs  # a language model continues its lines
        self.every_s = LOG_EVERY_S if every_s is None else every_s
        self.live = enabled and err.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _LinesPerSecond(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=err, redirect_stdout=False, redirect_stderr=False, transient=True,
            disable=not self.live,
        )
        self.task = self.progress.add_task(self.doing, total=total)
        self.start = self.logged = time.perf_counter()

    def __enter__(self) -> LineProgress:
        self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.progress.stop()

    def advance(self) -> None:
        self.done += 1
        if self.live:
            self.progress.update(self.task, completed=self.done, description=self.doing)
            return
        now = time.perf_counter()
        if self.enabled and now - self.logged >= self.every_s:
            self.logged = now
            say(self._line(now - self.start))

    def step(self, done: int, steps: int) -> None:
        """Progress inside a long line's search, which can run for minutes: its decoder steps so far."""
        text = f"a long line: step {done:,} of at most {steps:,}"
        if self.live:
            self.progress.update(self.task, description=text)
            return
        now = time.perf_counter()
        if self.enabled and now - self.logged >= self.every_s:
            self.logged = now
            say(f"{self.did} {self.done:,} lines; {text}")

    def _line(self, seconds: float) -> str:
        rate = self.done / max(seconds, 1e-9)
        if not self.total:
            return f"{self.did} {self.done:,} lines, {rate:,.1f} lines/s"
        left = (self.total - self.done) / max(rate, 1e-9)
        return (f"{self.did} {self.done:,} of {self.total:,} lines ({100 * self.done / self.total:.0f}%), "
                f"{rate:,.1f} lines/s, about {left / 60:.1f} min left")
