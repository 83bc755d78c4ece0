"""A stopped run continues exactly: stopped, killed or signalled, then resumed, it ends bitwise where an
uninterrupted run ends. Resuming with other settings, or training over a run by accident, is refused."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from seq2seq import checkpoint, runfolder, startup, training
from seq2seq.config import Config, ModelConfig, SearchConfig, TokenizerConfig, TrainConfig, to_toml
from seq2seq.errors import ConfigError

STEPS = 16  # four validations; about three epochs of this corpus, so resuming crosses epoch boundaries
SEQ2SEQ = [sys.executable, "-m", "seq2seq"]
runner = CliRunner()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, make_data_config) -> Config:
    """A tiny run with everything that must survive a resume in play: dropout (RNG), Adam's moments, a
    warm-up and a plateau schedule that cuts the rate, batch order across epochs, best BLEU, history."""
    data = make_data_config(tmp_path_factory.mktemp("data"), train=120, valid=8, seed=30, valid_words=4)
    return Config(
        data=data,
        tokenizer=TokenizerConfig(vocab_size=60),
        model=ModelConfig(emb_dim=16, hidden_dim=32),
        train=TrainConfig(lr=0.01, warmup_steps=3, schedule="plateau", plateau_patience=1, batch_tokens=300,
                          max_steps=STEPS, valid_every=4, log_every=2, threads=1),
        search=SearchConfig(batch_size=8, max_length_constant=3),
    ).validate()


def with_train(config: Config, **changes) -> Config:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


@pytest.fixture(scope="module")
def straight(config: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every resumed run must equal."""
    out = tmp_path_factory.mktemp("straight")
    training.train(config, out)
    return out


def stop_after(calls: int):
    """A should_stop that asks to stop at the step boundary after `calls` updates."""
    count = iter(range(1, 1_000_000))
    return lambda: "interrupted" if next(count) >= calls else None


@pytest.fixture(scope="module")
def interrupted(config: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped at step 5: between two validations, in the middle of an epoch."""
    out = tmp_path_factory.mktemp("interrupted")
    finished = training.train(config, out, should_stop=stop_after(5))
    assert (finished.reason, finished.step) == ("interrupted", 5)
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def metrics(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock column."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [{key: value for key, value in row.items() if key != "elapsed_s"} for row in rows]


def same_tensors(one, two) -> bool:
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(one, torch.Tensor):
        return isinstance(two, torch.Tensor) and torch.equal(one, two)
    if isinstance(one, dict):
        return one.keys() == two.keys() and all(same_tensors(one[key], two[key]) for key in one)
    if isinstance(one, (list, tuple)):
        return len(one) == len(two) and all(same_tensors(a, b) for a, b in zip(one, two))
    return one == two


def assert_same_run(resumed: Path, reference: Path) -> None:
    """Same weights, optimizer moments, schedule, RNG and loop position in last.pt; same best.pt; same metrics."""
    for name in ("last.pt", "best.pt"):
        one, two = checkpoint.load(resumed / name), checkpoint.load(reference / name)
        assert one.step == two.step, name
        assert same_tensors(one.model.state_dict(), two.model.state_dict()), f"{name}: weights differ"
    one, two = checkpoint.load(resumed / "last.pt").training, checkpoint.load(reference / "last.pt").training
    assert same_tensors(one["optimizer"], two["optimizer"]), "optimizer state differs"
    assert same_tensors(one["rng"], two["rng"]), "RNG state differs"
    assert one["schedule"] == two["schedule"]
    loops = [{key: value for key, value in state["loop"].items() if key not in ("elapsed", "history")} for state in (one, two)]
    assert loops[0] == loops[1]
    assert metrics(resumed) == metrics(reference)


def test_a_resumed_run_equals_the_uninterrupted_run(
    config: Config, straight: Path, interrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = copy_of(interrupted, tmp_path)

    def no_new_tokenizers(*args, **kwargs):
        raise AssertionError("a resumed run uses the tokenizers in last.pt")

    monkeypatch.setattr(startup, "train_tokenizers", no_new_tokenizers)
    finished = training.train(config, run, resume=True)

    assert (finished.reason, finished.step) == ("max_steps", STEPS)
    assert_same_run(run, straight)
    assert any(row["lr"] < config.train.lr for row in metrics(run)), "the plateau schedule cut the rate on the way"


def _train_until_killed(config: Config, out: Path) -> None:  # runs in the child process
    # after its first validation and save (step 4) the run waits, so that the kill comes at a known step
    training.train(config, out, report=lambda event: time.sleep(60) if isinstance(event, training.Validated) else None)


def test_a_run_killed_after_a_save_resumes_to_the_same_weights(config: Config, straight: Path, tmp_path: Path) -> None:
    # The child is forked rather than started afresh: a new interpreter spends ~2 s importing torch here.
    run = tmp_path / "run"
    child = multiprocessing.get_context("fork").Process(
        target=_train_until_killed, args=(with_train(config, max_steps=10_000), run))
    child.start()
    deadline = time.monotonic() + 60
    while not (run / "metrics.jsonl").exists() and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    child.kill()  # SIGKILL: no handler, no cleanup
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert checkpoint.load(run / "last.pt").step == 4

    training.train(config, run, resume=True)

    assert_same_run(run, straight)


def test_a_run_may_resume_on_another_device_setting(config: Config, straight: Path, interrupted: Path, tmp_path: Path) -> None:
    # where a run trains is not what it trains: a GPU run may go on on the CPU, and back
    run = copy_of(interrupted, tmp_path)

    training.train(with_train(config, device="cpu"), run, resume=True)

    assert_same_run(run, straight)


def test_max_time_counts_the_time_already_trained(config: Config, interrupted: Path, tmp_path: Path) -> None:
    run = copy_of(interrupted, tmp_path)
    trained = checkpoint.load(run / "last.pt").training["loop"]["elapsed"]
    assert trained > 0

    with pytest.raises(ConfigError, match="already trained 5 steps .* its limit; raise --max-steps or --max-time"):
        training.train(with_train(config, max_steps=0, max_time=trained / 60 / 2), run, resume=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: dataclasses.replace(c, model=dataclasses.replace(c.model, hidden_dim=64)),
         "model.hidden_dim is 64 but the run was trained with 32"),
        (lambda c: with_train(c, lr=0.02), "train.lr is 0.02 but the run was trained with 0.01"),
        (lambda c: with_train(c, seed=2), "train.seed is 2"),
    ],
    ids=["model", "learning-rate", "seed"],
)
def test_resuming_with_other_settings_is_refused(config: Config, interrupted: Path, tmp_path: Path, change, message: str) -> None:
    run = copy_of(interrupted, tmp_path)
    before = {path.name: path.read_bytes() for path in run.iterdir()}

    with pytest.raises(ConfigError, match=message):
        training.train(change(config), run, resume=True)

    assert {path.name: path.read_bytes() for path in run.iterdir()} == before, "a refused resume touches nothing"


def test_resuming_needs_a_run_to_resume(config: Config, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no run to resume"):
        training.train(config, tmp_path, resume=True)
    with pytest.raises(ConfigError, match="--resume and --overwrite exclude each other"):
        training.train(config, tmp_path, resume=True, overwrite=True)


def test_a_folder_holding_a_run_needs_resume_or_overwrite(config: Config, interrupted: Path) -> None:
    with pytest.raises(ConfigError, match="already holds a run .*pass --resume to continue it or --overwrite"):
        training.train(config, interrupted)


# --- through the command line ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def recipe(config: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.toml"
    path.write_text(to_toml(config), encoding="utf-8")
    return path


def cli_args(recipe: Path, output: Path, max_steps: int) -> list[str]:
    return ["train", "--config", str(recipe), "--output", str(output), "--max-steps", str(max_steps)]


def _start_and_signal(recipe: Path, output: Path, signum: int) -> subprocess.Popen:
    """Start `seq2seq train` and send `signum` once it reports its first steps; returns the process."""
    process = subprocess.Popen([*SEQ2SEQ, *cli_args(recipe, output, 100_000), "--set", "train.log_every=1"],
                               stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    while not (line := process.stderr.readline()).startswith("step ") and line:
        pass
    process.send_signal(signum)
    return process


def test_ctrl_c_and_sigterm_save_at_the_next_step_and_exit_130_and_143(recipe: Path, tmp_path: Path) -> None:
    runs = {signal.SIGINT: tmp_path / "int", signal.SIGTERM: tmp_path / "term"}
    processes = {signum: _start_and_signal(recipe, out, signum) for signum, out in runs.items()}  # both at once

    for signum, (code, word) in {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}.items():
        stdout, stderr = processes[signum].communicate(timeout=120)
        saved = checkpoint.load(runs[signum] / "last.pt")
        assert processes[signum].returncode == code, stderr
        assert stdout == ""
        assert stderr.splitlines()[-1] == (f"{word} at step {saved.step:,}: saved {runs[signum] / 'last.pt'}; "
                                           "continue with the same command plus --resume")
        assert "Traceback" not in stderr

    # the same command plus --resume goes on exactly; `--resume` alone reuses the run's own settings
    interrupted_at = checkpoint.load(runs[signal.SIGINT] / "last.pt").step
    resumed = runner.invoke(app, [*cli_args(recipe, runs[signal.SIGINT], interrupted_at + 3), "--resume", "-q"])
    assert resumed.exit_code == 0, resumed.output
    straight = runner.invoke(app, [*cli_args(recipe, tmp_path / "straight", interrupted_at + 3), "-q"])
    assert straight.exit_code == 0, straight.output
    one, two = checkpoint.load(runs[signal.SIGINT] / "last.pt"), checkpoint.load(tmp_path / "straight" / "last.pt")
    assert one.step == two.step == interrupted_at + 3
    assert same_tensors(one.model.state_dict(), two.model.state_dict())

    terminated_at = checkpoint.load(runs[signal.SIGTERM] / "last.pt").step
    alone = runner.invoke(app, ["train", "--output", str(runs[signal.SIGTERM]), "--resume", "--max-steps",
                                str(terminated_at + 1), "-q"])
    assert alone.exit_code == 0, alone.output
    assert alone.stdout == f"{runs[signal.SIGTERM] / 'best.pt'}\n"


def test_a_second_ctrl_c_stops_at_once_and_leaves_the_checkpoints_alone(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A first Ctrl-C after step 5; the second arrives while the save that the first asked for is being written.
    from cli.training_progress import TrainingReporter

    report, real_save, pressed = TrainingReporter.__call__, torch.save, []

    def reporter(self, event) -> None:
        if isinstance(event, training.StepsDone) and event.step == 5:
            pressed.append("first")
            os.kill(os.getpid(), signal.SIGINT)
        report(self, event)

    def save(payload, file) -> None:
        if pressed == ["first"]:
            pressed.append("second")
            file.write(b"the first bytes of a checkpoint")
            os.kill(os.getpid(), signal.SIGINT)
        real_save(payload, file)

    monkeypatch.setattr(TrainingReporter, "__call__", reporter)
    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"

    result = runner.invoke(app, [*cli_args(recipe, out, 100), "--set", "train.log_every=1", "-q"])

    assert result.exit_code == 130, result.output
    assert result.stderr.strip() == f"interrupted again: stopped at once; the checkpoints in {out} are those saved before"
    assert pressed == ["first", "second"]
    assert checkpoint.load(out / "last.pt").step == 4, "last.pt is the one saved before"
    assert sorted(path.name for path in out.iterdir()) == sorted(runfolder.RUN_FILES), "no temporary file left"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
        (["--resume", "--hidden-dim", "64"], "model.hidden_dim is 64 but the run was trained with 32"),
        ([], "already holds a run"),
    ],
    ids=["resume-and-overwrite", "changed-model", "neither"],
)
def test_refusals_through_the_cli_are_usage_errors(recipe: Path, interrupted: Path, tmp_path: Path, extra, fragment) -> None:
    run = copy_of(interrupted, tmp_path)
    result = runner.invoke(app, [*cli_args(recipe, run, STEPS), *extra])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and fragment in result.stderr


def test_a_start_that_saved_no_checkpoint_does_not_block_the_next_one(config: Config, tmp_path: Path) -> None:
    """config.toml alone (a start stopped by bad data, a full disk or SIGKILL before its first save): neither
    "already holds a run" nor "no run to resume", but a new run that says what it replaces."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text(to_toml(config), encoding="utf-8")
    events: list = []
    training.train(dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=1)), out,
                   report=events.append)
    (ready,) = [event for event in events if isinstance(event, training.DataReady)]
    assert ready.replaced_unfinished == ("config.toml",)
    assert (out / "last.pt").exists()
    with pytest.raises(ConfigError, match="already holds a run"):
        training.train(config, out)
