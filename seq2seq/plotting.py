"""Pictures, drawn with matplotlib (the optional `plot` extra): a run's training curves from its
metrics.jsonl, and a translation's attention as a heatmap of source pieces against output pieces.

matplotlib is imported only when a picture is drawn, and only through its object API on an Agg
canvas: no pyplot, no process-wide backend switch, no display needed.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
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
    ("validation BLEU / chrF", "linear", (("valid_bleu", "BLEU, sacreBLEU"), ("valid_chrf", "chrF"))),
    ("validation error rate, %", "linear", (("valid_wer", "WER"), ("valid_cer", "CER"), ("valid_ter", "TER"))),
    ("validation exact match, %", "linear", (("valid_exact", "exact"),)),
)
X_AXES = (("step", 1.0, "step"), ("elapsed_s", 60.0, "minutes"))  # (key, divisor, label): left and right columns
# Attention pictures: one square cell per (output piece, source piece), with room around for the labels;
# long sentences get smaller cells so that a 400-piece line stays a picture a viewer can open.
CELL_PX, MIN_CELL_PX, MAX_GRID_PX, MARGIN_PX = 28, 8, 3200, 200


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
                if key == f"valid_{rows[-1].get('select_metric', 'bleu')}":  # where best.pt was (re)written; the last star is the file's
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


def attention_picture_size(columns: int, rows: int) -> tuple[int, int]:
    """(width, height) in pixels of the attention picture of `columns` source and `rows` output labels."""
    cell = max(MIN_CELL_PX, min(CELL_PX, MAX_GRID_PX // max(columns, rows, 1)))
    return MARGIN_PX + cell * columns, MARGIN_PX + cell * rows


def plot_attention(weights: Sequence[Sequence[float]], source: Sequence[str], target: Sequence[str],
                   path: str | Path, *, title: str = "") -> None:
    """Draw attention weights (one row per `target` label, one column per `source` label) as a PNG heatmap.

    Labels are drawn as given (SentencePiece pieces, EOS included); a glyph the font lacks is drawn
    as a box rather than stopping the picture, so those warnings are silenced.
    """
    width, height = attention_picture_size(len(source), len(target))
    figure = _figure(width, height)
    ax = figure.add_subplot()
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    fontsize = max(4.0, 0.36 * min(CELL_PX, (width - MARGIN_PX) / max(len(source), 1)))
    ax.set_xticks(range(len(source)), labels=list(source), rotation=90, fontsize=fontsize)
    ax.set_yticks(range(len(target)), labels=list(target), fontsize=fontsize)
    ax.tick_params(top=True, labeltop=True, bottom=False, labelbottom=False)
    ax.set_xlabel("source pieces")
    ax.set_ylabel("output pieces")
    figure.colorbar(image, ax=ax, fraction=0.05, shrink=0.8, label="attention")
    if title:
        figure.suptitle(title, fontsize="medium")
    with warnings.catch_warnings(), atomic_write(path, binary=True) as file:
        warnings.simplefilter("ignore", UserWarning)
        figure.savefig(file, format="png", dpi=DPI)


def require_matplotlib() -> None:
    """Fail early, in one line, when matplotlib is missing: before hours of work whose pictures could not be drawn."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise Seq2SeqError("drawing pictures needs matplotlib: pip install 'seq2seq[plot]' (or pip install matplotlib)") from None


def prepare_picture_folder(folder: str | Path) -> Path:
    """Check that pictures can be drawn and stored in `folder` (created if need be), before any work starts."""
    require_matplotlib()
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DataError(f"{folder}: is a file; pictures need a folder") from None
    except OSError as error:
        raise DataError(f"{folder}: cannot create the folder ({error.strerror})") from None
    return folder


def _figure(width: int, height: int) -> Any:
    """An empty matplotlib Figure of width x height pixels on an Agg canvas."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _draw(ax: Any, rows: list[dict[str, Any]], x_key: str, divisor: float, y_key: str, label: str, **style: Any) -> None:
    """One line of the rows that have both values; nothing (and no legend entry) when none has."""
    pairs = [(row[x_key] / divisor, row[y_key]) for row in rows
             if row.get(x_key) is not None and row.get(y_key) is not None]
    if pairs:
        ax.plot([x for x, _ in pairs], [y for _, y in pairs], label=label, **style)
