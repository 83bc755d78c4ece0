"""`torchrun --nproc-per-node=2 -m seq2seq translate`: each process translates its block of lines, and one output
appears, equal byte for byte to one process's; a process without lines takes part; a failure on one process
fails all with its one-line message and leaves no output; what cannot be split is refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from seq2seq.config import SearchConfig
from seq2seq.distributed import World
from seq2seq.errors import DataError
from seq2seq.sharding import Shard
from seq2seq.tokenizer import Tokenizers
from tests.conftest import save_untrained_model

RANKS = 2
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={RANKS}",
            "-m", "seq2seq", "translate"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory, tokenizers: Tokenizers) -> Path:
    """An untrained tiny model with a beam of 3 and batches of 2, so that a block spans several batches."""
    return save_untrained_model(tmp_path_factory.mktemp("model") / "tiny.pt", tokenizers,
                                SearchConfig(beam_size=3, batch_size=2, max_length_constant=3))


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def torchrun(*arguments: str | Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([*TORCHRUN, *map(str, arguments)], capture_output=True, text=True, timeout=90, env=environment)


def one_process(*arguments: str | Path) -> str:
    result = CliRunner().invoke(app, ["translate", *map(str, arguments), "-q"])
    assert result.exit_code == 0, result.output
    return result.stdout


def rank_errors(stderr: str) -> list[str]:
    """The command's error lines (torchrun adds its own report of the failed processes)."""
    return [line.removeprefix("error: ") for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("options", [["--nbest", "2"], ["--scores", "--prefix", "PREFIXES"]], ids=["nbest", "prefix"])
def test_two_processes_write_what_one_process_writes(model_path: Path, corpus, tmp_path: Path, options: list[str]) -> None:
    # 7 lines: blocks of 3 and 4, each over several batches; n-best ids and prefixes must follow the input's numbering
    source = write_lines(tmp_path / "in.txt", corpus[0][:7])
    prefixes = write_lines(tmp_path / "prefixes.txt", ["", *corpus[1][1:7]])
    options = [str(prefixes) if option == "PREFIXES" else option for option in options]
    out = tmp_path / "out" / "out.txt"
    out.parent.mkdir()

    done = torchrun("-m", model_path, "-i", source, "-o", out, *options)

    assert done.returncode == 0, done.stderr[-3000:]
    assert out.read_text(encoding="utf-8") == one_process("-m", model_path, "-i", source, *options)
    assert [path.name for path in out.parent.iterdir()] == ["out.txt"], "no shard or temporary file is left"
    assert done.stderr.count("translated 7 lines") == 1, done.stderr[-3000:]  # one summary, of all the lines


def test_a_process_without_lines_takes_part(model_path: Path, corpus, tmp_path: Path) -> None:
    source, out = write_lines(tmp_path / "in.txt", corpus[0][:1]), tmp_path / "out.txt"

    done = torchrun("-m", model_path, "-i", source, "-o", out, "-q")

    assert done.returncode == 0, done.stderr[-3000:]
    assert out.read_text(encoding="utf-8") == one_process("-m", model_path, "-i", source)
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1


def test_a_failing_process_fails_all_with_its_message_and_writes_nothing(model_path: Path, corpus, tmp_path: Path) -> None:
    # Lines 2 and 3 are rank 1's. Its picture of line 3 (numbered in the whole input) has a folder in its way;
    # rank 0's pictures are drawn. Rank 0 must not write the output without rank 1's lines.
    source, out, pictures = write_lines(tmp_path / "in.txt", corpus[0][:3]), tmp_path / "out" / "out.txt", tmp_path / "attention"
    out.parent.mkdir()
    (pictures / "line-000003.png").mkdir(parents=True)

    done = torchrun("-m", model_path, "-i", source, "-o", out, "--attention-plot", pictures, "-q")

    assert done.returncode != 0
    # rank 0 alone speaks for the run (cli.console): one line, naming the rank that failed
    problem = f"rank 1: {pictures / 'line-000003.png'}: is a folder, cannot write a file there"
    assert rank_errors(done.stderr) == [f"{problem} (after 1 translated lines)"], done.stderr[-3000:]
    assert list(out.parent.iterdir()) == [], "no output, no shard, no temporary file"
    assert (pictures / "line-000001.png").is_file()


@pytest.mark.parametrize(("arguments", "message"), [
    (["-i", "-", "-o", "out.txt"], "needs --input FILE and --output FILE"),
    (["-i", "in.txt"], "needs --input FILE and --output FILE"),
    (["-i", "in.txt", "-o", "out.txt", "--sample"], "--sample is not split across processes"),
], ids=["stdin", "stdout", "sample"])
def test_what_cannot_be_split_is_refused_in_one_line(model_path: Path, tmp_path: Path, monkeypatch, arguments, message) -> None:
    # Refused before joining the process group, so WORLD_SIZE alone will do: were the check gone, joining would
    # fail at once (the rest of torchrun's variables missing) with another message.
    monkeypatch.chdir(tmp_path)
    write_lines(tmp_path / "in.txt", ["a b"])
    monkeypatch.setenv("WORLD_SIZE", "2")

    result = CliRunner().invoke(app, ["translate", "-m", str(model_path), *arguments], input="a b\n")

    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "out.txt").exists()


def test_blocks_cover_every_line_once_in_order() -> None:
    for total in range(6):
        for size in (1, 2, 3, 4):
            blocks = [Shard(World(rank=rank, size=size)).block(total) for rank in range(size)]
            assert [line for block in blocks for line in block] == list(range(total)), (total, size)
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_prefixes_must_pair_with_the_whole_input_not_the_block(tmp_path: Path) -> None:
    prefixes = write_lines(tmp_path / "prefixes.txt", ["p1", "p2", "p3", "p4"])
    second = Shard(World(rank=1, size=2))

    assert second.paired(str(prefixes), 4, "in.txt") == ["p3", "p4"]
    with pytest.raises(DataError, match=r"prefixes.txt has 4 lines but in.txt has 5: they must pair line by line"):
        second.paired(str(prefixes), 5, "in.txt")
