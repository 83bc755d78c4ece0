"""The public API: the README's example runs, the CLI goes through `seq2seq` alone, and the library keeps its shape."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import seq2seq
from seq2seq.config import SearchConfig

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[str]:
    """Every module `path` imports, at any depth (`from a import b` gives a.b when a.b is a module of seq2seq)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names
                      if (ROOT / node.module.replace(".", "/") / f"{alias.name}.py").is_file()]
    return found


def test_the_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = re.search(r"## From Python.*?```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    assert code, "README.md has a Python example under '## From Python'"
    (tmp_path / "data").symlink_to(ROOT / "data")  # run from a checkout, as the README says
    monkeypatch.chdir(tmp_path)
    done = subprocess.run([sys.executable, "-c", code.group(1)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "max_steps 150 runs/quick/best.pt"
    assert sum(" -> " in line for line in lines) == 9, "3 hypotheses for each of 3 words"
    assert lines[-2].startswith("bleu ") and "nrefs:1" in lines[-2] and lines[-1].startswith("chrf ")


def test_the_command_line_imports_the_library_through_its_public_api_only() -> None:
    reached = {name: path.name for path in (ROOT / "cli").glob("*.py") for name in _imports(path)
               if name.startswith("seq2seq.")}
    assert reached == {}, "cli/ imports seq2seq's modules directly instead of `from seq2seq import ...`"


def test_every_public_name_resolves_and_the_package_imports_without_torch() -> None:
    assert all(getattr(seq2seq, name) is not None for name in seq2seq.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        seq2seq.nothing_here  # noqa: B018
    done = subprocess.run([sys.executable, "-c", "import sys, seq2seq; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_the_library_never_imports_typer_or_rich_and_its_imports_have_no_cycle() -> None:
    # __main__.py is `python -m seq2seq` (torchrun starts it so): the command's entry, not the library
    library = [path for path in (ROOT / "seq2seq").glob("*.py") if path.stem not in ("__init__", "__main__")]
    graph = {f"seq2seq.{path.stem}": {name for name in _imports(path) if name.startswith("seq2seq.")} for path in library}
    ui = {path.name: name for path in library for name in _imports(path) if name.split(".")[0] in ("typer", "rich", "cli")}
    assert ui == {}

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        for imported in sorted(graph.get(module, ())):
            if (found := cycle_from(imported, [*path, module])) is not None:
                return found
        return None

    cycles = [cycle for module in graph if (cycle := cycle_from(module, []))]
    assert cycles == [], " -> ".join(cycles[0]) if cycles else ""


def test_search_options_are_checked_by_the_library(make_model, tokenizers) -> None:
    vocab = tokenizers.tgt.vocab_size
    translator = seq2seq.Translator(make_model(src_vocab=vocab, tgt_vocab=vocab), tokenizers, SearchConfig(beam_size=2))
    with pytest.raises(seq2seq.ConfigError, match="nbest 3 with beam_size 2"):
        translator.translate(["the cat"], nbest=3)
    with pytest.raises(seq2seq.ConfigError, match="unknown search setting 'beam'"):
        translator.translate(["the cat"], beam=3)
    with pytest.raises(seq2seq.ConfigError, match="search.beam_size must be at least 1, got 0"):
        translator.translate(["the cat"], beam_size=0)
    with pytest.raises(seq2seq.ConfigError, match="make a new translator"):
        translator.translate(["the cat"], quantize="int8")
    with pytest.raises(seq2seq.ConfigError, match="int8 runs on the CPU"):
        seq2seq.Translator(make_model(src_vocab=vocab, tgt_vocab=vocab), tokenizers, SearchConfig(quantize="int8"),
                           device="cuda")
    (best, runner_up), = translator.translate(["the cat"], nbest=2)
    assert best.score >= runner_up.score
