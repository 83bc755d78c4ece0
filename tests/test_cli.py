"""The command line end to end: train -> translate -> score on a tiny corpus, and the CLI's promises."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
WORDS = "the a cat dog sees likes small big red house tree man woman runs sleeps".split()
SEQ2SEQ = [sys.executable, "-m", "seq2seq"]


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy 'translation' task: the target is the source upper-cased and reversed word by word."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for split, size in (("train", 300), ("valid", 20)):
        sources = [_sentence(rng) for _ in range(size)]
        (folder / f"{split}.src").write_text("".join(s + "\n" for s in sources))
        (folder / f"{split}.tgt").write_text("".join(" ".join(reversed(s.upper().split())) + "\n" for s in sources))
    return folder


def _train_args(corpus: Path, output: Path) -> list[str]:
    return ["train", "--source", str(corpus / "train.src"), "--target", str(corpus / "train.tgt"),
            "--valid-source", str(corpus / "valid.src"), "--valid-target", str(corpus / "valid.tgt"),
            "--output", str(output), "--vocab-size", "60", "--emb-dim", "16", "--hidden-dim", "32",
            "--max-steps", "30", "--valid-every", "15", "--batch-tokens", "600", "-q"]


@pytest.fixture(scope="module")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("run") / "toy"
    result = runner.invoke(app, _train_args(corpus, output))
    assert result.exit_code == 0, result.output
    return output


def test_training_writes_a_complete_run_folder(trained: Path) -> None:
    assert {"config.toml", "metrics.jsonl", "best.pt", "last.pt"} <= {p.name for p in trained.iterdir()}
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [15, 30]
    assert all(row["bleu_signature"].startswith("nrefs:1|case:mixed") for row in rows)


def test_training_prints_the_best_checkpoint_on_stdout(corpus: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, _train_args(corpus, tmp_path / "run"))
    assert result.exit_code == 0
    assert result.stdout.strip() == str(tmp_path / "run" / "best.pt")


def test_training_keeps_onednn_kernel_cache_small(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `small_kernel_cache` sets for oneDNN (test_allocator.py checks that oneDNN obeys it)."""
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "unset")  # so that the test's end removes it again
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    result = runner.invoke(app, [*_train_args(corpus, tmp_path / "run"), "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"


def test_a_second_run_on_the_same_data_takes_its_tokenizer_from_the_cache(corpus: Path, tmp_path: Path) -> None:
    from seq2seq import checkpoint

    def run(name: str, *extra: str) -> str:
        args = [arg for arg in _train_args(corpus, tmp_path / name) if arg != "-q"]
        result = runner.invoke(app, [*args, "--max-steps", "2", "--cache-dir", str(tmp_path / "cache"), *extra])
        assert result.exit_code == 0, result.output
        return result.stderr

    first = run("first")
    assert "tokenizer: from the cache" not in first
    assert "preparing the tokenizer (300 pairs)\nencoding 300 pairs\nplanning batches (300 pairs)\n" in first
    [kept] = (tmp_path / "cache" / "tokenizers").iterdir()
    assert f"tokenizer: from the cache ({kept})" in run("second")
    assert "tokenizer: from the cache" not in run("third", "--no-cache")
    assert "tokenizer: from the cache" not in run("fourth", "--vocab-size", "50")
    assert len(list((tmp_path / "cache" / "tokenizers").iterdir())) == 2
    protos = {checkpoint.load(tmp_path / name / "best.pt").tokenizers.src.model_proto for name in ("first", "second", "third")}
    assert protos == {kept.read_bytes()}


def test_a_cache_folder_that_cannot_be_made_is_one_line_and_training_goes_on(corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "a file").write_text("in the way")
    args = [arg for arg in _train_args(corpus, tmp_path / "run") if arg != "-q"]
    result = runner.invoke(app, [*args, "--max-steps", "2", "--cache-dir", str(tmp_path / "a file")])
    assert result.exit_code == 0, result.output
    assert f"{tmp_path / 'a file' / 'tokenizers'}: cannot keep tokenizers there" in result.stderr


def test_the_default_cache_is_under_xdg_cache_home_and_a_missing_home_only_skips_it(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SEQ2SEQ_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    args = [arg for arg in _train_args(corpus, tmp_path / "run") if arg != "-q"]
    assert runner.invoke(app, [*args, "--max-steps", "1"]).exit_code == 0
    assert len(list((tmp_path / "xdg" / "seq2seq" / "tokenizers").glob("*.model"))) == 1

    monkeypatch.delenv("XDG_CACHE_HOME")
    def no_home(cls: type[Path]) -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", classmethod(no_home))
    homeless = runner.invoke(app, [*args, "--max-steps", "1", "--output", str(tmp_path / "homeless")])
    assert homeless.exit_code == 0, homeless.output
    assert "no home folder and no --cache-dir: tokenizers are trained and not kept" in homeless.stderr


def test_training_into_an_existing_run_is_refused(corpus: Path, trained: Path) -> None:
    result = runner.invoke(app, _train_args(corpus, trained))
    assert result.exit_code == 2
    assert "already holds a run" in result.stderr and "--overwrite" in result.stderr


def test_translate_pipes_one_line_out_per_line_in(trained: Path, corpus: Path) -> None:
    lines = ["the cat sees a dog", "", "small red house", "", "a man runs"]
    done = subprocess.run([*SEQ2SEQ, "translate", "-m", str(trained / "best.pt"), "-q"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout.split("\n")[:-1]
    assert len(out) == len(lines)
    assert [line == "" for line in out][1::2] == [True, True]  # empty in, empty out
    assert done.stderr == ""


def test_translate_to_a_file_then_score_like_sacrebleu(trained: Path, corpus: Path, tmp_path: Path) -> None:
    hyp = tmp_path / "hyp.txt"
    result = runner.invoke(app, ["translate", "-m", str(trained / "best.pt"), "-i", str(corpus / "valid.src"),
                                 "-o", str(hyp), "--beam-size", "3"])
    assert result.exit_code == 0, result.output
    assert len(hyp.read_text().splitlines()) == 20
    ours = runner.invoke(app, ["score", str(corpus / "valid.tgt"), "-i", str(hyp), "-b", "-w", "4"])
    theirs = subprocess.run([sys.executable, "-m", "sacrebleu", str(corpus / "valid.tgt"), "-i", str(hyp), "-b", "-w", "4"],
                            capture_output=True, text=True)
    assert ours.exit_code == 0 and ours.stdout == theirs.stdout


def test_nbest_prints_moses_blocks(trained: Path) -> None:
    result = runner.invoke(app, ["translate", "-m", str(trained / "best.pt"), "--nbest", "3", "--beam-size", "4", "-q"],
                           input="the cat\nsmall house\n")
    assert result.exit_code == 0, result.output
    rows = [line.split(" ||| ") for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == ["0", "0", "0", "1", "1", "1"]
    assert all(float(row[2]) <= 0 for row in rows)


def test_quantized_translation_answers_every_line_and_a_bad_choice_is_one_line(trained: Path) -> None:
    result = runner.invoke(app, ["translate", "-m", str(trained / "best.pt"), "--quantize", "int8", "-q"],
                           input="the cat\n\nsmall house\n")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3
    refused = runner.invoke(app, ["translate", "-m", str(trained / "best.pt"), "--quantize", "int4"], input="the cat\n")
    assert refused.exit_code == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == ["error: search.quantize must be none or int8"]


def test_missing_model_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["translate", "-m", str(tmp_path / "nope.pt")], input="hello\n")
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0 and "nope.pt" in result.stderr
    assert "Traceback" not in result.output


def test_mismatched_training_files_are_refused_before_training(corpus: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.tgt"
    short.write_text("ONE\nTWO\n")
    args = _train_args(corpus, tmp_path / "run")
    args[args.index("--target") + 1] = str(short)
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "train.src has 300 lines" in result.stderr and "short.tgt has 2" in result.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def test_print_config_shows_flags_over_the_file(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[model]\nhidden_dim = 128\nemb_dim = 64\n")
    result = runner.invoke(app, ["train", "--config", str(recipe), "--source", "s", "--emb-dim", "32",
                                 "--set", "train.lr=0.01", "--print-config"])
    assert result.exit_code == 0, result.output
    assert "hidden_dim = 128" in result.stdout and "emb_dim = 32" in result.stdout and "lr = 0.01" in result.stdout


def test_unknown_setting_is_a_usage_error() -> None:
    result = runner.invoke(app, ["train", "--set", "model.hidden=3", "--print-config"])
    assert result.exit_code == 2
    assert "model.hidden" in result.stderr


COMMANDS = ("train", "translate", "score", "serve", "info", "average", "plot")


def test_every_command_has_help_with_an_example() -> None:
    for command in COMMANDS:
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Examples" in result.stdout, command


def test_help_epilog_keeps_examples_joins_prose_and_escapes_brackets() -> None:
    from cli.console import help_epilog

    text = "\b\nExamples:\n  seq2seq a\n  seq2seq b\n\nOne line\nand the next, pip install 'x[y]'."
    assert help_epilog(text) == "\b\nExamples:\n  seq2seq a\n  seq2seq b\n\nOne line and the next, pip install 'x\\[y]'."


@pytest.mark.parametrize("command", COMMANDS)
def test_help_prose_fills_an_80_column_terminal(command: str) -> None:
    """Each paragraph after the examples wraps at the terminal's width, not at the source's line breaks."""
    result = runner.invoke(app, [command, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.split("Examples:", 1)[1].splitlines()]
    paragraphs = "\n".join(lines).split("\n\n")[1:]  # the first is the examples
    short = [line for paragraph in paragraphs for line in paragraph.strip().splitlines()[:-1] if len(line) < 60]
    assert paragraphs and short == []


def test_help_shows_square_brackets_as_typed() -> None:
    result = runner.invoke(app, ["plot", "--help"], terminal_width=80, env={"COLUMNS": "80"})
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "pip install 'seq2seq[plot]'" in text and "[default: RUN/curves.png]" in text


def test_version_names_the_libraries() -> None:
    done = subprocess.run([*SEQ2SEQ, "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("seq2seq ") and "torch" in done.stdout


@pytest.mark.parametrize("traced", [False, True], ids=["plain", "under-a-tracer"])
def test_the_command_skips_the_interpreter_teardown_unless_a_tracer_waits_for_it(traced: bool) -> None:
    """The teardown costs a one-line translation about 0.5 s; a profiler or coverage tool writes its results in it."""
    code = ("import atexit, sys; atexit.register(print, 'teardown ran'); sys.argv = ['seq2seq', '--version']; "
            f"{'sys.settrace(lambda *args: None); ' if traced else ''}from cli.main import main; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("seq2seq ")
    assert ("teardown ran" in done.stdout) == traced


def test_help_does_not_import_torch() -> None:
    code = "import sys; from cli.main import app; assert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_library_never_imports_typer_or_rich() -> None:
    library = Path(__file__).resolve().parents[1] / "seq2seq"
    importing = re.compile(r"^\s*(from|import)\s+(typer|rich)\b", re.MULTILINE)
    offenders = [path.name for path in library.glob("*.py") if path.name != "__main__.py" and importing.search(path.read_text())]
    assert offenders == []
    assert importing.search("import rich.console") and importing.search("    from typer import Typer")


def test_int8_on_a_cpu_without_avx2_is_one_line_and_exit_2(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"architecture": "x86_64", "avx2": False})
    result = runner.invoke(app, ["translate", "-m", str(trained / "best.pt"), "--quantize", "int8"], input="the cat\n")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: --quantize int8 needs AVX2 and this CPU has none (torch's int8 products require it); use --quantize none"]


@pytest.mark.parametrize(("precision", "units", "refused"), [("bf16", False, True), ("bf16", True, False), ("fp32", False, False)])
def test_translating_in_bf16_on_a_cpu_without_bf16_units_is_one_line_and_exit_2(
    trained: Path, monkeypatch: pytest.MonkeyPatch, precision: str, units: bool, refused: bool,
) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": units})
    result = runner.invoke(app, ["translate", "-m", str(trained / "best.pt"), "--precision", precision, "--device", "cpu"],
                           input="the cat\nsmall house\n")
    if refused:
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr.strip().splitlines() == [
            "error: bf16 needs bf16 units and this CPU has none (AVX512-BF16, AMX or Arm BF16): emulated, it would run "
            "slower than fp32; use --precision fp32"]
    else:
        assert result.exit_code == 0, result.output
        assert len(result.stdout.splitlines()) == 2


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a device whose writes fail with ENOSPC")
@pytest.mark.parametrize(("redirect", "message"), [
    ("> /dev/full", "error: stdout: No space left on device"),
    (">&-", "error: stdout is closed; seq2seq writes its results there: redirect it (> FILE, or > /dev/null)"),
])
def test_a_stdout_that_cannot_be_written_is_one_line_and_exit_1(tmp_path: Path, redirect: str, message: str) -> None:
    import shlex
    import subprocess
    import sys

    (tmp_path / "ref.txt").write_text("a b c\n", encoding="utf-8")
    command = f"{shlex.quote(sys.executable)} -m seq2seq score ref.txt -i ref.txt -m wer {redirect}"
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == message
