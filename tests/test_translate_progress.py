"""`translate` shows progress on stderr only: a bar on a terminal, plain lines otherwise, nothing with -q.

Whatever is shown, stdout carries the same bytes.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli.progress
from cli.main import app
from seq2seq import checkpoint
from seq2seq.config import Config, ModelConfig, SearchConfig
from seq2seq.tokenizer import Tokenizers
from tests.conftest import save_untrained_model

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, tokenizers: Tokenizers) -> Path:
    """An untrained tiny model: what it says does not matter here, where it says it does."""
    return save_untrained_model(
        tmp_path_factory.mktemp("model") / "model.pt", tokenizers, SearchConfig(beam_size=2, batch_size=4, max_length_constant=3))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, corpus: tuple[list[str], list[str]]) -> Path:
    path = tmp_path_factory.mktemp("input") / "test.src"
    path.write_text("".join(line + "\n" for line in corpus[0][:12]), encoding="utf-8")
    return path


@pytest.fixture
def every_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain progress lines after every translated line instead of every 30 seconds."""
    monkeypatch.setattr(cli.progress, "LOG_EVERY_S", 0.0)


def _on_a_terminal(args: list[str]) -> tuple[bytes, bytes]:
    """Run `seq2seq ARGS` with stderr on a pseudo-terminal and stdout on a pipe: (stdout, what the terminal got)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen([sys.executable, "-m", "seq2seq", *args], stdout=subprocess.PIPE, stderr=follower,
                               stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    screen = bytearray()

    def drain() -> None:  # a pty's buffer is small: read while the child writes, until it closes
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout = process.communicate(timeout=120)[0]
    reader.join(timeout=10)
    os.close(leader)
    assert process.returncode == 0, screen.decode(errors="replace")
    return stdout, bytes(screen)


def test_stdout_is_the_same_with_a_bar_with_plain_lines_and_with_nothing(model: Path, source: Path, every_line: None) -> None:
    args = ["translate", "-m", str(model), "-i", str(source)]
    with_bar, screen = _on_a_terminal(args)
    plain = runner.invoke(app, args)
    silent = runner.invoke(app, [*args, "-q"])

    assert "translating" in screen.decode(errors="replace"), "the terminal showed a bar"
    assert "translated 12 of 12 lines" in plain.stderr and silent.stderr == ""
    assert with_bar == plain.stdout_bytes == silent.stdout_bytes
    assert len(with_bar.splitlines()) == 12


def test_without_a_terminal_a_file_gets_counted_lines_with_time_left(model: Path, source: Path, every_line: None) -> None:
    result = runner.invoke(app, ["translate", "-m", str(model), "-i", str(source), "-o", str(source.with_suffix(".out"))])
    assert result.exit_code == 0, result.output
    progress = [line for line in result.stderr.splitlines() if " of 12 lines" in line]
    assert len(progress) == 12
    assert re.fullmatch(r"translated 3 of 12 lines \(25%\), [\d,.]+ lines/s, about [\d.]+ min left", progress[2])
    assert result.stdout == ""


def test_from_a_pipe_progress_counts_lines_without_a_total(model: Path, source: Path, every_line: None) -> None:
    result = runner.invoke(app, ["translate", "-m", str(model)], input=source.read_text(encoding="utf-8"))
    assert result.exit_code == 0, result.output
    assert re.search(r"^translated 5 lines, [\d,.]+ lines/s$", result.stderr, re.MULTILINE)
    assert " of " not in result.stderr and "left" not in result.stderr


def test_plain_lines_come_at_most_every_interval(model: Path, source: Path) -> None:
    result = runner.invoke(app, ["translate", "-m", str(model), "-i", str(source)])  # 12 lines: well under 30 s
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[-1].startswith("translated 12 lines (")  # only the summary
    assert len(result.stderr.splitlines()) == 1


def test_a_long_line_is_announced_with_its_cost_and_followed_step_by_step(
    model: Path, source: Path, corpus: tuple[list[str], list[str]], every_line: None, tmp_path: Path,
) -> None:
    long_line = " ".join(corpus[0][:400])  # over LONG_LINE pieces
    (tmp_path / "long.src").write_text(f"{corpus[0][0]}\n{long_line}\n", encoding="utf-8")
    result = runner.invoke(app, ["translate", "-m", str(model), "-i", str(tmp_path / "long.src"), "--max-source-pieces",
                                 "0", "--workers", "1", "-o", str(tmp_path / "long.out")])
    assert result.exit_code == 0, result.output
    announced = re.search(r"^warning: .*long\.src:2: ([\d,]+) pieces: its search may take up to ([\d,]+) steps and "
                          r"about [\d.]+ GiB of memory$", result.stderr, re.MULTILINE)
    assert announced, result.stderr
    pieces, steps = (int(group.replace(",", "")) for group in announced.groups())
    assert pieces >= 1000 and steps == 2 * (pieces + 1) + 3  # source + EOS, max_length_ratio 2.0, constant 3
    followed = re.findall(r"^translated 0 lines; a long line: step ([\d,]+) of at most ([\d,]+)$", result.stderr,
                          re.MULTILINE)
    assert [done for done, _ in followed[:3]] == ["0", "1", "2"]
    assert {most for _, most in followed} == {f"{steps:,}"}


def test_the_memory_a_long_line_needs_grows_with_its_source_and_beam(tokenizers: Tokenizers) -> None:
    from seq2seq.translation import search_memory

    config = Config(model=ModelConfig(emb_dim=8, hidden_dim=16))
    model = checkpoint.build_model(config, tokenizers)
    search = SearchConfig()
    one = search_memory(model, 10_000, search, rows=5)
    assert search_memory(model, 20_000, search, rows=5) == pytest.approx(2 * one, rel=0.01)
    assert search_memory(model, 10_000, search, rows=10) > 1.5 * one
    # Bahdanau's attention runs a hidden-wide layer over every source position for every row
    assert one >= 4 * 5 * 10_000 * 16
