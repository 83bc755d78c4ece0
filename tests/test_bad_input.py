"""The bad input catalogue (tests/data/bad) through `train`, `translate` and `score`.

Every error a user can cause is one line on stderr and exit 1 (data) or 2 (usage), never a traceback;
`translate` answers every input line with exactly one output line, or fails without leaving a file
that looks complete; the same goes for model files that are not what they claim to be.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from seq2seq import checkpoint
from seq2seq.config import SearchConfig
from seq2seq.tokenizer import Tokenizers
from tests.conftest import save_untrained_model

BAD = Path(__file__).parent / "data" / "bad"
TEN, NINE = BAD / "ten-lines.txt", BAD / "nine-lines.txt"
SEQ2SEQ = [sys.executable, "-m", "seq2seq"]
runner = CliRunner()


def long_line(chars: int = 100_000) -> str:
    """Words of the synthetic corpus, repeated to `chars` characters: made here, not shipped as 100 KB."""
    return ("the cat sat on a mat by the river " * (chars // 34 + 1))[:chars]


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def run(*args: str, stdin: str | bytes | None = None):
    return runner.invoke(app, [str(arg) for arg in args], input=stdin)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, tokenizers: Tokenizers) -> Path:
    """An untrained tiny model: what it says does not matter here, how many lines it says does."""
    return save_untrained_model(
        tmp_path_factory.mktemp("model") / "model.pt", tokenizers, SearchConfig(beam_size=2, batch_size=2, max_length_constant=3))


# --- translate -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "lines"), [("ten-lines.txt", 10), ("empty-lines.txt", 10), ("crlf-bom.txt", 3), ("empty.txt", 0)]
)
def test_translate_answers_every_line_with_one_clean_line(model: Path, tmp_path: Path, name: str, lines: int) -> None:
    out = tmp_path / "out.txt"
    result = run("translate", "-m", model, "-i", BAD / name, "-o", out, "-q")

    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert data.count(b"\n") == lines
    assert b"\r" not in data and not data.startswith("\ufeff".encode()), "output is clean LF text without a BOM"
    if name == "empty-lines.txt":
        assert [number for number, line in enumerate(data.split(b"\n")[:-1], start=1) if not line] == [2, 7]


def test_translate_cuts_a_100000_character_line_and_still_answers_it(model: Path, tmp_path: Path) -> None:
    source = tmp_path / "long.txt"
    source.write_text(f"the cat\n{long_line()}\nsmall houses\n", encoding="utf-8")

    result = run("translate", "-m", model, "-i", source)

    assert result.exit_code == 0, result.output
    assert len(result.stdout.split("\n")) == 3 + 1
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert f"{source}:2:" in warnings[0] and "only the first 400 are translated" in warnings[0]


def test_translate_replaces_invalid_utf8_on_stdin_and_names_the_line(model: Path) -> None:
    result = run("translate", "-m", model, stdin=b"the cat\nbad \xff byte\nsmall houses\n")

    assert result.exit_code == 0, result.output
    assert len(result.stdout.split("\n")) == 3 + 1
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "<stdin>:2: invalid UTF-8 at byte 5" in warning and "U+FFFD" in warning


def test_translate_from_stdin_accepts_crlf_and_a_bom(model: Path) -> None:
    result = run("translate", "-m", model, "-q", stdin=(BAD / "crlf-bom.txt").read_bytes())
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 3 and "\r" not in result.stdout


@pytest.mark.parametrize(
    ("source", "fragments"),
    [
        (BAD / "invalid-utf8.txt", ["invalid-utf8.txt:3: invalid UTF-8 at byte 4"]),
        (BAD / "nul.bin", ["nul.bin:1:", "looks like a binary file"]),
        (BAD / "missing.txt", ["missing.txt: no such file"]),
        (BAD, ["is a folder"]),
    ],
    ids=["invalid-utf8", "binary", "missing", "folder"],
)
def test_translate_refuses_an_unreadable_file_before_writing_anything(
    model: Path, tmp_path: Path, source: Path, fragments: list[str]
) -> None:
    out = tmp_path / "out.txt"
    result = run("translate", "-m", model, "-i", source, "-o", out)

    assert_one_line_error(result, 1, *fragments)
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == [], "no output file, not even an empty one"


def test_translate_that_fails_mid_stream_says_how_far_it_got(model: Path) -> None:
    # stdin is streamed in chunks of 8 batches (16 lines for this model): the first chunk is already out
    stdin = b"the cat\n" * 20 + b"binary \x00 line\n"
    result = run("translate", "-m", model, stdin=stdin)

    assert_one_line_error(result, 1, "<stdin>:21:", "looks like a binary file", "after 16 translated lines")
    assert result.stdout.count("\n") == 16


def test_translate_into_an_unwritable_path_is_one_line(model: Path, tmp_path: Path) -> None:
    assert_one_line_error(run("translate", "-m", model, "-i", TEN, "-o", tmp_path / "no" / "out.txt"), 1,
                          "out.txt: cannot write")
    assert_one_line_error(run("translate", "-m", model, "-i", TEN, "-o", tmp_path), 1, "is a folder")


def test_translate_piped_into_head_ends_quietly(model: Path, tmp_path: Path) -> None:
    # more output than a pipe buffers, so translate is still writing when `head` has gone
    source = tmp_path / "many.txt"
    source.write_text("the cat sat on a mat\n" * 3000, encoding="utf-8")
    translate = subprocess.Popen([*SEQ2SEQ, "translate", "-m", str(model), "-i", str(source), "-q", "--beam-size", "1"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=translate.stdout, stdout=subprocess.PIPE)
    translate.stdout.close()  # only `head` reads it now
    first, _ = head.communicate(timeout=120)
    stderr = translate.communicate(timeout=120)[1].decode()

    assert first.count(b"\n") == 1
    assert stderr == "", "no traceback, no 'Exception ignored' on the way out"
    assert translate.returncode in (0, 1)


def test_translate_on_a_missing_gpu_is_one_line_and_writes_nothing(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"

    assert_one_line_error(run("translate", "-m", model, "-i", TEN, "-o", out, "--device", "cuda"), 2,
                          "device cuda", "no CUDA GPU")
    assert not out.exists()


@pytest.mark.parametrize(("options", "fragment"), [(["--device", "tpu"], "device tpu: expected one of auto, cpu, cuda"),
                                                   (["--quantize", "int8", "--device", "cuda"], "int8 runs on the CPU")])
def test_translate_refuses_a_device_it_cannot_use(model: Path, options: list[str], fragment: str) -> None:
    assert_one_line_error(run("translate", "-m", model, "-i", TEN, *options), 2, fragment)


# --- model files -----------------------------------------------------------------------------------


def _payload(model: Path) -> dict:
    return torch.load(model, weights_only=True)


def _saved(path: Path, payload: object) -> Path:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())
    return path


class CreatesAFile:
    """Unpickling this calls open(path, "w"): a model file that runs code when loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _truncated(model: Path, tmp: Path) -> Path:
    (tmp / "truncated.pt").write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    return tmp / "truncated.pt"


def _corrupt(model: Path, tmp: Path) -> Path:
    with zipfile.ZipFile(model) as source, zipfile.ZipFile(tmp / "corrupt.pt", "w") as target:
        for item in source.infolist():
            target.writestr(item, b"h\x65." if item.filename.endswith("/data.pkl") else source.read(item))
    return tmp / "corrupt.pt"


def _other_version(model: Path, tmp: Path) -> Path:
    return _saved(tmp / "newer.pt", {**_payload(model), "format_version": checkpoint.FORMAT_VERSION + 1})


def _text_file(model: Path, tmp: Path) -> Path:
    (tmp / "notes.pt").write_text("not a model\n", encoding="utf-8")
    return tmp / "notes.pt"


def _code(model: Path, tmp: Path) -> Path:
    return _saved(tmp / "evil.pt", {**_payload(model), "info": CreatesAFile(tmp / "ran")})


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (_truncated, "not a seq2seq checkpoint"),
        (_corrupt, "not a readable seq2seq checkpoint"),
        (_other_version, f"checkpoint format version {checkpoint.FORMAT_VERSION + 1} is not supported"),
        (_text_file, "not a seq2seq checkpoint"),
        (_code, "refused"),
        (lambda model, tmp: tmp, "is a folder"),
        (lambda model, tmp: tmp / "absent.pt", "no such model file"),
    ],
    ids=["truncated", "corrupt", "other-version", "text-file", "runs-code", "folder", "missing"],
)
def test_a_bad_model_file_is_one_line_and_exit_1(model: Path, tmp_path: Path, make, fragment: str) -> None:
    bad = make(model, tmp_path)

    result = run("translate", "-m", bad, "-i", TEN)

    assert_one_line_error(result, 1, str(bad), fragment)
    assert not (tmp_path / "ran").exists(), "loading never runs code from the file"


# --- train -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_data(tmp_path_factory: pytest.TempPathFactory, make_pairs) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for split, count, seed in (("train", 80, 20), ("valid", 5, 21)):
        src, tgt = make_pairs(count, seed=seed, max_words=4)
        (folder / f"{split}.src").write_text("".join(f"{line}\n" for line in src), encoding="utf-8")
        (folder / f"{split}.tgt").write_text("".join(f"{line}\n" for line in tgt), encoding="utf-8")
    return folder


def train_args(data: Path, output: Path, source: Path | None = None, target: Path | None = None) -> list:
    return ["train", "--source", source or data / "train.src", "--target", target or data / "train.tgt",
            "--valid-source", data / "valid.src", "--valid-target", data / "valid.tgt", "--output", output,
            "--vocab-size", 60, "--emb-dim", 8, "--hidden-dim", 16, "--max-steps", 2, "--valid-every", 2,
            "--set", "train.threads=1"]


@pytest.mark.parametrize(
    ("source", "target", "fragments"),
    [
        (TEN, NINE, [f"{TEN} has 10 lines but {NINE} has 9"]),
        (BAD / "invalid-utf8.txt", BAD / "invalid-utf8.txt", ["invalid-utf8.txt:3: invalid UTF-8"]),
        (BAD / "nul.bin", BAD / "nul.bin", ["nul.bin:1:", "looks like a binary file"]),
        (BAD / "missing.txt", TEN, ["missing.txt: no such file"]),
        (BAD, TEN, ["is a folder"]),
        (BAD / "empty.txt", BAD / "empty.txt", ["empty.txt are empty"]),
    ],
    ids=["different-lengths", "invalid-utf8", "binary", "missing", "folder", "empty"],
)
def test_train_refuses_bad_data_before_training(
    train_data: Path, tmp_path: Path, source: Path, target: Path, fragments: list[str]
) -> None:
    result = run(*train_args(train_data, tmp_path / "run", source, target))

    assert_one_line_error(result, 1, *fragments)
    assert not (tmp_path / "run").exists(), "nothing is written for a run that cannot start"


def test_train_skips_empty_and_too_long_pairs_and_says_how_many(train_data: Path, tmp_path: Path) -> None:
    src = (train_data / "train.src").read_text(encoding="utf-8").splitlines()
    tgt = (train_data / "train.tgt").read_text(encoding="utf-8").splitlines()
    src[3], tgt[5] = "", ""                   # two pairs with an empty side
    src[7] = long_line()                       # one pair far over --max-length
    source, target = tmp_path / "train.src", tmp_path / "train.tgt"
    source.write_bytes(("\ufeff" + "".join(f"{line}\r\n" for line in src)).encode())  # and CRLF with a BOM
    target.write_text("".join(f"{line}\n" for line in tgt), encoding="utf-8")

    result = run(*train_args(train_data, tmp_path / "run", source, target), "--max-length", 50)

    assert result.exit_code == 0, result.output
    assert "77 training pairs (2 empty and 1 too long skipped)" in result.stderr


@pytest.mark.parametrize("where", ["a-file", "under-a-file"])
def test_train_into_an_unwritable_output_is_one_line(train_data: Path, tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    output = blocker if where == "a-file" else blocker / "run"

    result = run(*train_args(train_data, output))

    assert_one_line_error(result, 1, str(output), "is a file" if where == "a-file" else "cannot create the run folder")


def test_train_on_a_missing_gpu_is_one_line_before_writing_anything(train_data: Path, tmp_path: Path) -> None:
    result = run(*train_args(train_data, tmp_path / "run"), "--device", "cuda")

    assert_one_line_error(result, 2, "device cuda", "no CUDA GPU")
    assert not (tmp_path / "run").exists()


# --- score -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "hypotheses", "fragments"),
    [
        (TEN, NINE, ["has 9 lines", "has 10"]),
        (BAD / "invalid-utf8.txt", BAD / "invalid-utf8.txt", ["invalid-utf8.txt:3: invalid UTF-8"]),
        (TEN, BAD / "nul.bin", ["nul.bin:1:", "looks like a binary file"]),
        (TEN, BAD / "missing.txt", ["missing.txt: no such file"]),
        (TEN, BAD, ["is a folder"]),
        (BAD / "empty.txt", BAD / "empty.txt", ["no lines to score"]),
    ],
    ids=["different-lengths", "invalid-utf8", "binary", "missing", "folder", "empty"],
)
def test_score_refuses_bad_files(reference: Path, hypotheses: Path, fragments: list[str]) -> None:
    assert_one_line_error(run("score", reference, "-i", hypotheses), 1, *fragments)


def test_score_accepts_crlf_and_a_bom(tmp_path: Path) -> None:
    reference = tmp_path / "ref.txt"
    reference.write_text("".join(TEN.read_text(encoding="utf-8").splitlines(keepends=True)[:3]), encoding="utf-8")
    result = run("score", reference, "-i", BAD / "crlf-bom.txt", "-b")
    assert result.exit_code == 0, result.output
    assert float(result.stdout) == pytest.approx(100.0)
