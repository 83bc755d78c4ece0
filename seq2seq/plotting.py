"""Training curves from a run's metrics.jsonl, drawn with matplotlib (the optional `plot` extra).

matplotlib is imported only when a picture is drawn, and only through its object API on an Agg
canvas: no pyplot, no process-wide backend switch, no display needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seq2seq.errors import ConfigError, DataError, Seq2SeqError
from seq2seq.textio import atomic_write, read_lines

METRICS_FILE = "metrics.jsonl"
FORMATS = ("png", "pdf", "svg")
DPI = 100  # pixels per inch: a width of 1200 px is a 12-inch figure
# Panels from top to bottom: (y label, y scale, (metrics.jsonl key, legend label)...). A panel whose
# keys appear in no row is left out, so `train_loss` is drawn when training logs it.
PANELS = (
    ("loss per target token", "linear", (("train_loss", "training"), ("valid_loss", "validation"))),
    ("validation perplexity", "log", (("valid_ppl", "validation"),)),
    ("validation BLEU", "linear", (("valid_bleu", "greedy, sacreBLEU"),)),
)
X_AXES = (("step", 1.0, "step"), ("elapsed_s", 60.0, "minutes"))  # (key, divisor, label): left and right columns


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl (given the run folder or the file), one per validation, by step."""
    run = Path(run)
    if not run.exists():
        raise DataError(f"{run}: no such run folder")
    path = run / METRICS_FILE if run.is_dir() else run
    if not path.is_file():
        raise DataError(f"{run}: no {METRICS_FILE} here (training writes it at the first validation)")
    rows = []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not a JSON line ({error.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise DataError(f"{path}:{number}: expected a JSON object with an integer 'step', as training writes")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no validation rows yet")
    return sorted(rows, key=lambda row: row["step"])


def plot_curves(rows: list[dict[str, Any]], path: str | Path, *, width: int = 1200, height: int = 900,
                title: str = "") -> None:
    """Draw each panel against steps (left) and minutes (right); the file type comes from the suffix."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ConfigError(f"{path}: cannot draw a .{fmt} picture; name a .png, .pdf or .svg file")
    figure = _figure(width, height)
    panels = [panel for panel in PANELS if any(row.get(key) is not None for row in rows for key, _ in panel[2])]
    axes = figure.subplots(len(panels), len(X_AXES), squeeze=False, sharex="col")
    for (y_label, y_scale, series), row_axes in zip(panels, axes):
        for ax, (x_key, divisor, _) in zip(row_axes, X_AXES):
            for key, label in series:
                _draw(ax, rows, x_key, divisor, key, label, marker="o", markersize=3)
                if key == "valid_bleu":  # where best.pt was (re)written; the last star is the file's
                    best = [row for row in rows if row.get("best")]
                    _draw(ax, best, x_key, divisor, key, "new best", linestyle="", marker="*", markersize=10)
            ax.set_yscale(y_scale)
            ax.set_ylabel(y_label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    for ax, (_, _, x_label) in zip(axes[-1], X_AXES):
        ax.set_xlabel(x_label)
    signature = next((row["bleu_signature"] for row in reversed(rows) if row.get("bleu_signature")), "")
    figure.suptitle(f"{title}\nBLEU {signature}" if signature else title, fontsize="medium")
    with atomic_write(path, binary=True) as file:
        figure.savefig(file, format=fmt, dpi=DPI)


def _figure(width: int, height: int) -> Any:
    """An empty matplotlib Figure of width x height pixels on an Agg canvas."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise Seq2SeqError("drawing curves needs matplotlib: pip install 'seq2seq[plot]' (or pip install matplotlib)") from None
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _draw(ax: Any, rows: list[dict[str, Any]], x_key: str, divisor: float, y_key: str, label: str, **style: Any) -> None:
    """One line of the rows that have both values; nothing (and no legend entry) when none has."""
    pairs = [(row[x_key] / divisor, row[y_key]) for row in rows
             if row.get(x_key) is not None and row.get(y_key) is not None]
    if pairs:
        ax.plot([x for x, _ in pairs], [y for _, y in pairs], label=label, **style)
