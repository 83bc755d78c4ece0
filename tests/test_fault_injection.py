"""Fault injection, fast: a few of bench/fault_injection.py's cases, with fixed seeds (the bench runs them all).

Real `seq2seq` processes are SIGKILLed at chosen moments and meet read-only folders; the disk fills at each
file a command writes (in this process, through CliRunner: a process a case would take minutes). A case
passes when every file left loads or reads whole and nothing temporary is left (the checks are
bench/faultkit.py's, the bench's own). Two runs in one folder: tests/test_runfolder.py, with real processes.
"""

from __future__ import annotations

import random
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench import faultkit
from cli.main import app

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="follows processes through /proc")
runner = CliRunner()


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> faultkit.Workspace:
    return faultkit.Workspace(tmp_path_factory.mktemp("faults"), seed=1)


def assert_survived(cases: list[faultkit.Case]) -> None:
    assert all(case.reached for case in cases), [case.name for case in cases if not case.reached]
    assert not [case for case in cases if not case.survived]


def test_train_killed_in_tokenizer_training_and_in_a_save_leaves_every_file_whole(space: faultkit.Workspace) -> None:
    cases = faultkit.kill_training(space, random.Random(3), ["during tokenizer training", "during a save"])
    assert ".pt." in cases[1].detail, "the second kill landed inside a checkpoint's save"
    assert_survived(cases)


def test_translate_killed_while_writing_leaves_the_earlier_output_and_its_rerun_no_temporary_file(
        space: faultkit.Workspace) -> None:
    (case,) = faultkit.kill_translation(space, random.Random(3), ["while writing"])
    assert "out.txt the earlier one; the kill left .out.txt." in case.detail, "killed while out.txt was being written"
    assert_survived([case])


def in_process(args: Sequence[str], fault: faultkit.DiskFault | None) -> faultkit.Outcome:
    """Run `seq2seq ARGS` here, on a disk that fills as `fault` says; an uncaught exception shows in stderr."""
    if fault is None:
        result = runner.invoke(app, list(args))
    else:
        with faultkit.filled_disk(fault):
            result = runner.invoke(app, list(args))
    stderr = result.stderr
    if result.exc_info and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return faultkit.Outcome(result.exit_code, stderr, fault.hits if fault else [])


@pytest.mark.parametrize(("written", "point"), [  # the bench adds attention pictures, and each file at each point
    *[(written, "part-way") for written in faultkit.WRITTEN if written.pattern not in (faultkit.LOCK, "line-*.png")],
    (faultkit.WRITTEN[0], "at the first byte"),
    (next(written for written in faultkit.WRITTEN if written.pattern == "last.pt"), "at fsync"),
], ids=lambda value: value.pattern if isinstance(value, faultkit.Written) else value)
def test_a_full_disk_at_any_file_is_one_line_and_leaves_every_file_whole(
        space: faultkit.Workspace, written: faultkit.Written, point: str) -> None:
    case = faultkit.full_disk_case(space, written, point, in_process)
    assert case.reached, case.detail
    assert case.survived, case.problems


@pytest.fixture(scope="module")
def permissions_hold(space: faultkit.Workspace) -> None:
    reason = faultkit.permissions_ignored(space)
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("name", ["train --resume in a read-only run folder",
                                  "translate -o over a file in a read-only folder"])
def test_a_read_only_folder_is_refused_in_one_line_and_left_as_it_was(
        space: faultkit.Workspace, permissions_hold: None, name: str) -> None:
    case = faultkit.read_only_case(space, name)
    assert case.survived, case.problems


def test_the_check_finds_a_cut_checkpoint_a_cut_line_and_a_left_temporary_file(tmp_path: Path) -> None:
    """The check itself: what a broken run folder looks like to it."""
    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 cut short")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2', encoding="utf-8")
    (tmp_path / ".best.pt.123.abcdefgh.tmp").write_bytes(b"")

    found = faultkit.problems_in(tmp_path)

    assert [problem.split(":")[0] for problem in found] == [".best.pt.123.abcdefgh.tmp", "last.pt", "metrics.jsonl"]
    assert faultkit.problems_in(tmp_path, ended=False)[0].startswith("last.pt"), "after a kill, a temporary file may stay"
