"""`seq2seq plot` draws a run's metrics.jsonl into a real picture, and says in one line what is missing."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows(count: int) -> list[dict]:
    """Validation rows as training writes them: loss falling, BLEU rising, a new best most of the time."""
    rows = []
    for index in range(1, count + 1):
        loss = 1.0 + 4.0 * math.exp(-index / 3)
        rows.append({"step": 100 * index, "epoch": 1 + index // 4, "elapsed_s": 55.0 * index, "valid_loss": loss,
                     "valid_ppl": math.exp(loss), "valid_bleu": 30 * (1 - math.exp(-index / 4)),
                     "bleu_signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0",
                     "best": index % 3 != 0})
    return rows


@pytest.fixture
def run(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in _rows(8)))
    return folder


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which a PNG must start with."""
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_curves_are_a_png_of_the_asked_size_with_something_drawn(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    picture = tmp_path / "curves.png"
    result = runner.invoke(app, ["plot", str(run), "-o", str(picture), "--width", "640", "--height", "480"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(picture)
    assert _png_size(picture.read_bytes()) == (640, 480)
    pixels = imread(picture)  # (480, 640, 4) floats in [0, 1]
    colours = {tuple(pixel) for pixel in pixels.reshape(-1, pixels.shape[-1])[::7].round(2).tolist()}
    assert len(colours) > 20  # lines, markers, text and anti-aliasing, not a blank canvas
    assert (pixels[..., :3] < 0.5).any(axis=-1).mean() > 0.005  # some dark ink


def test_default_picture_goes_into_the_run_folder(run: Path) -> None:
    pytest.importorskip("matplotlib")
    rows = _rows(3)
    rows[1]["train_loss"] = 2.5  # drawn when training logs it
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = runner.invoke(app, ["plot", str(run / "metrics.jsonl")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(run / "curves.png")
    assert _png_size((run / "curves.png").read_bytes()) == (1200, 900)


def test_missing_matplotlib_is_one_line_with_the_install_command(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` now raises ImportError, as when not installed
    result = runner.invoke(app, ["plot", str(run)])
    assert_one_line_error(result, 1, "matplotlib", "pip install 'seq2seq[plot]'")
    assert not (run / "curves.png").exists()


def test_a_folder_without_metrics_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(runner.invoke(app, ["plot", str(tmp_path)]), 1, str(tmp_path), "metrics.jsonl")
    assert_one_line_error(runner.invoke(app, ["plot", str(tmp_path / "nope")]), 1, "nope", "no such run folder")


def test_a_damaged_metrics_line_is_named(run: Path) -> None:
    with (run / "metrics.jsonl").open("a") as file:
        file.write('{"step": 900, "valid_bleu": \n')
    assert_one_line_error(runner.invoke(app, ["plot", str(run)]), 1, "metrics.jsonl:9", "not a JSON line")


def test_an_unknown_picture_type_is_a_usage_error(run: Path, tmp_path: Path) -> None:
    assert_one_line_error(runner.invoke(app, ["plot", str(run), "-o", str(tmp_path / "c.gif")]), 2, ".gif", ".png")


def test_help_has_examples_and_does_not_import_matplotlib() -> None:
    result = runner.invoke(app, ["plot", "--help"])
    assert result.exit_code == 0 and "Examples" in result.stdout
    code = "import sys; from cli.main import app; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_error_rate_and_exact_match_panels_appear_when_validation_computed_them(tmp_path: Path, monkeypatch) -> None:
    """A panel is drawn per kind of score present: BLEU alone gives 3, WER/CER and exact match add one each."""
    from seq2seq import plotting

    made: list[int] = []
    real = plotting._figure

    def counting(width: int, height: int):
        figure = real(width, height)
        subplots = figure.subplots
        figure.subplots = lambda rows, *args, **kwargs: made.append(rows) or subplots(rows, *args, **kwargs)
        return figure

    monkeypatch.setattr(plotting, "_figure", counting)
    rows = _rows(4)
    plotting.plot_curves(rows, tmp_path / "bleu.png")
    g2p = [{**row, "valid_wer": 10.0 - row["step"] / 100, "valid_cer": 5.0, "valid_exact": 50.0 + row["step"] / 100,
            "select_metric": "exact"} for row in rows]
    plotting.plot_curves(g2p, tmp_path / "g2p.png")
    assert made == [3, 5]
