"""Data-parallel training on two CPU processes (gloo over loopback): the same updates as one process on the
whole batch, the same weights on every rank, one writer, shared decisions, exact resume, no hangs.

Each 2-rank run is two forked children joined through a rendezvous file (no TCP port to race for), with
a deadline: a hang fails the test instead of stalling the suite. Dropout makes each rank draw its own
masks, so the comparisons with one process use dropout 0; the resume test keeps dropout on.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from typer.testing import CliRunner

from cli.main import app
from seq2seq import checkpoint, distributed, runfolder, training
from seq2seq.config import Config, ModelConfig, SearchConfig, TokenizerConfig, TrainConfig, to_toml
from seq2seq.errors import ConfigError, DataError

RANKS = 2
DEADLINE_S = 60      # for a whole 2-rank run
COLLECTIVE_S = 30    # a collective waiting longer than this raises inside the ranks


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, make_data_config) -> Config:
    """A tiny model without dropout: one process and two ranks then compute the same function."""
    data = make_data_config(tmp_path_factory.mktemp("data"), train=60, valid=4, seed=60, valid_words=3)
    return Config(
        data=data,
        tokenizer=TokenizerConfig(vocab_size=50),
        model=ModelConfig(emb_dim=8, hidden_dim=16, embedding_dropout=0.0, layer_dropout=0.0, output_dropout=0.0),
        train=TrainConfig(lr=0.001, batch_tokens=100, max_steps=3, valid_every=3, log_every=1, threads=1),
        search=SearchConfig(batch_size=4, max_length_constant=3),
    ).validate()


def with_train(config: Config, **changes) -> Config:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


def with_dropout(config: Config) -> Config:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, embedding_dropout=0.2, output_dropout=0.2))


# --- the harness: two forked ranks --------------------------------------------------------------------


def _rank_main(rank: int, rendezvous: Path, results: Path, collective_s: float, work, args: tuple) -> None:  # a child
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo would otherwise resolve the hostname, maybe off loopback
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=RANKS,
                            timeout=timedelta(seconds=collective_s))
    result = work(rank, *args)  # a rank that raises exits without destroying the group, as under torchrun
    dist.destroy_process_group()
    (results / f"rank-{rank}.pickle").write_bytes(pickle.dumps(result))


def start_ranks(folder: Path, work, *args, collective_s: float = COLLECTIVE_S) -> tuple[list[int | None], float, list]:
    """Run `work(rank, *args)` in RANKS forked processes joined by gloo: (exit codes, seconds taken, results).

    `folder` (empty) holds the rendezvous and the results. A rank still running at the deadline is killed
    and has exit code None.
    """
    folder.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("fork")  # a fresh interpreter spends ~2 s importing torch here
    processes = [context.Process(target=_rank_main, args=(rank, folder / "rendezvous", folder, collective_s, work, args))
                 for rank in range(RANKS)]
    start = time.monotonic()
    for process in processes:
        process.start()
    for process in processes:
        process.join(max(0.0, start + DEADLINE_S - time.monotonic()))
    took = time.monotonic() - start
    codes = [process.exitcode for process in processes]
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    results = [pickle.loads(path.read_bytes()) if (path := folder / f"rank-{rank}.pickle").exists() else None
               for rank in range(RANKS)]
    return codes, took, results


def run_ranks(folder: Path, work, *args) -> list:
    codes, took, results = start_ranks(folder, work, *args)
    assert codes == [0] * RANKS, f"rank exit codes {codes} after {took:.0f} s (None: still running at the deadline)"
    return results


def _train_rank(rank: int, config: Config, out: Path, resume: bool = False, stop: tuple[int, int] | None = None) -> dict:
    """One rank's training; `stop` = (rank, calls): that rank alone asks to stop after that many updates.

    Besides its events and weights, it returns the names of the files this rank put into `out`: every write
    of a run is atomic, a temporary file renamed into place by os.replace.
    """
    models, wrote = [], []
    wrap, replace = distributed.World.wrap, os.replace

    def recorded_replace(source: str, target: str, **options) -> None:
        if Path(target).parent == out:
            wrote.append(Path(target).name)
        replace(source, target, **options)

    distributed.World.wrap = lambda world, model: models.append(model) or wrap(world, model)  # this child only
    os.replace = recorded_replace  # this child only
    calls = iter(range(1, 1_000_000))
    asks = (lambda: "terminated" if next(calls) >= stop[1] else None) if stop and stop[0] == rank else (lambda: None)
    events: list = []
    finished = training.train(config, out, report=events.append, resume=resume, should_stop=asks)
    return {"finished": finished, "events": events, "wrote": sorted(set(wrote)),
            "weights": {name: value.clone() for name, value in models[0].state_dict().items()}}


def _fail_on_rank_1(rank: int, config: Config, out: Path) -> None:
    def asks() -> None:
        if rank == 1:
            raise RuntimeError("rank 1 fails")

    training.train(config, out, should_stop=asks)


def _missing_data_on_rank_1(rank: int, config: Config, out: Path) -> str:
    if rank == 1:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, source=str(out.parent / "missing.src")))
    with pytest.raises(DataError) as error:
        training.train(config, out)
    return str(error.value)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path).model.state_dict()


def max_difference(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor]) -> float:
    assert one.keys() == two.keys()
    return max(float((one[name] - two[name]).abs().max()) for name in one)


def of_kind(events: list, kind: type) -> list:
    return [event for event in events if isinstance(event, kind)]


# --- the same training as one process -------------------------------------------------------------------

# Two ranks sum the batch's loss and gradients in another order than one process does, so the two runs
# differ by rounding. Measured over 16 seeds of this config's data and weights, the worst differences were
# 1.6e-7 (loss, relative), 1.1e-7 (gradient norm, relative) and 2.1e-6 (weights after 3 Adam steps of
# lr 1e-3, absolute: where a gradient changes sign between steps, Adam's m / sqrt(v) magnifies rounding).
# The bounds are about 10 times those. The bugs they guard against are far larger: a loss not multiplied by
# the number of ranks halves the gradient norm; shares that overlap count examples twice in the loss.
RELATIVE = 2e-6   # loss and gradient norm of each step
WEIGHTS = 2e-5    # the largest difference of any weight after the run


def assert_trained_alike(one: tuple[Path, list], two: tuple[Path, list]) -> None:
    """Two runs (out folder, rank 0's events) made the same updates: loss and gradient norm at every step,
    and the final weights, within rounding."""
    (one_out, one_events), (two_out, two_events) = one, two
    steps_one, steps_two = of_kind(one_events, training.StepsDone), of_kind(two_events, training.StepsDone)
    assert [event.step for event in steps_two] == [event.step for event in steps_one] == [1, 2, 3]
    for mine, theirs in zip(steps_two, steps_one, strict=True):  # the whole batch's loss and gradient, each step
        assert mine.loss == pytest.approx(theirs.loss, rel=RELATIVE)
        assert mine.grad_norm == pytest.approx(theirs.grad_norm, rel=RELATIVE)
    assert max_difference(weights(two_out / "last.pt"), weights(one_out / "last.pt")) < WEIGHTS


@pytest.fixture(scope="module")
def one_process(config: Config, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    out, events = tmp_path_factory.mktemp("one"), []
    training.train(with_train(config, batch_tokens=2 * config.train.batch_tokens), out, report=events.append)
    return out, events


@pytest.fixture(scope="module")
def two_ranks(config: Config, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("two")
    return out, run_ranks(tmp_path_factory.mktemp("ranks"), _train_rank, config, out)


def test_two_ranks_of_b_tokens_update_as_one_process_of_2b(one_process, two_ranks) -> None:
    out, results = two_ranks
    assert_trained_alike(one_process, (out, results[0]["events"]))


def test_both_ranks_hold_the_same_weights_and_rank_0_saved_them(two_ranks) -> None:
    out, results = two_ranks
    assert max_difference(results[0]["weights"], results[1]["weights"]) == 0.0
    assert max_difference(results[0]["weights"], weights(out / "last.pt")) == 0.0


def test_only_rank_0_reports_and_writes(two_ranks) -> None:
    out, results = two_ranks
    assert results[1]["events"] == [], "rank 1 says nothing"
    assert [result["wrote"] for result in results] == [sorted(runfolder.RUN_FILES), []], "rank 1 writes nothing"
    assert [type(event) for event in results[0]["events"]][-2:] == [training.Validated, training.Finished]
    assert sorted(path.name for path in out.iterdir()) == sorted(runfolder.RUN_FILES), "one set of files, no temporaries"
    assert len((out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()) == 1, "one validation, one line"


def test_a_checkpoint_of_two_ranks_loads_and_translates_without_ddp(two_ranks, config: Config) -> None:
    out, _ = two_ranks
    saved = checkpoint.load(out / "best.pt")  # plain Seq2Seq weights: no "module." prefix from DDP
    assert saved.training == {} and checkpoint.load(out / "last.pt").training["world_size"] == RANKS

    result = CliRunner().invoke(app, ["translate", "-m", str(out / "best.pt"), "-i", config.data.valid_source, "-q"])

    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 4


def test_a_rank_with_an_empty_share_finishes_and_changes_nothing(config: Config, tmp_path: Path) -> None:
    # A budget below any example's size plans batches of one example: rank 1's share is always empty.
    tiny, events = with_train(config, batch_tokens=1), []
    training.train(with_train(tiny, batch_tokens=2), tmp_path / "one", report=events.append)

    results = run_ranks(tmp_path / "ranks", _train_rank, tiny, tmp_path / "two")

    assert [result["finished"].step for result in results] == [3, 3]
    assert_trained_alike((tmp_path / "one", events), (tmp_path / "two", results[0]["events"]))


def test_accumulating_2_batches_of_b_tokens_updates_as_one_batch_of_2b(config: Config, one_process, tmp_path: Path) -> None:
    events: list = []
    training.train(with_train(config, accumulate=2), tmp_path, report=events.append)
    assert_trained_alike(one_process, (tmp_path, events))


def test_two_ranks_accumulating_2_batches_of_b_update_as_one_process_of_4b(config: Config, tmp_path: Path) -> None:
    """Processes x accumulation: each rank cuts its share of a batch of 4B into two micro-batches."""
    events: list = []
    training.train(with_train(config, batch_tokens=4 * config.train.batch_tokens), tmp_path / "one", report=events.append)

    results = run_ranks(tmp_path / "ranks", _train_rank, with_train(config, accumulate=2), tmp_path / "two")

    assert_trained_alike((tmp_path / "one", events), (tmp_path / "two", results[0]["events"]))
    assert max_difference(results[0]["weights"], results[1]["weights"]) == 0.0


# --- stopping, resuming, failing ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def straight(config: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-rank run of 6 steps with dropout (each rank's own RNG stream in play)."""
    out = tmp_path_factory.mktemp("straight")
    run_ranks(tmp_path_factory.mktemp("ranks"), _train_rank, with_train(with_dropout(config), max_steps=6), out)
    return out


@pytest.fixture(scope="module")
def stopped(config: Config, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """The same run, asked to stop after step 3 by rank 1 alone (as if only it had received SIGTERM)."""
    out = tmp_path_factory.mktemp("stopped")
    return out, run_ranks(tmp_path_factory.mktemp("ranks"), _train_rank, with_train(with_dropout(config), max_steps=6),
                          out, False, (1, 3))


def test_a_stop_request_on_one_rank_stops_every_rank_at_the_same_step(stopped) -> None:
    out, results = stopped
    assert [(result["finished"].reason, result["finished"].step) for result in results] == [("terminated", 3)] * RANKS
    assert checkpoint.load(out / "last.pt").step == 3


def test_a_resumed_two_rank_run_equals_the_uninterrupted_one(config: Config, straight: Path, stopped, tmp_path: Path) -> None:
    run = Path(shutil.copytree(stopped[0], tmp_path / "run"))

    run_ranks(tmp_path / "ranks", _train_rank, with_train(with_dropout(config), max_steps=6), run, True)

    one, two = checkpoint.load(run / "last.pt"), checkpoint.load(straight / "last.pt")
    assert one.step == two.step == 6
    assert max_difference(one.model.state_dict(), two.model.state_dict()) == 0.0
    for rank in range(RANKS):
        assert torch.equal(one.training["rng_by_rank"][rank]["cpu"], two.training["rng_by_rank"][rank]["cpu"])
    assert not torch.equal(two.training["rng_by_rank"][0]["cpu"], two.training["rng_by_rank"][1]["cpu"])
    rows = [[{key: value for key, value in json.loads(line).items() if key != "elapsed_s"}
             for line in (folder / "metrics.jsonl").read_text().splitlines()] for folder in (run, straight)]
    assert rows[0] == rows[1]


def test_resuming_with_another_number_of_processes_is_refused(config: Config, stopped, tmp_path: Path) -> None:
    run = Path(shutil.copytree(stopped[0], tmp_path / "run"))
    with pytest.raises(ConfigError, match="trained by 2 processes and this run has 1 process; .* resume it with torchrun"):
        training.train(with_train(with_dropout(config), max_steps=6), run, resume=True)


def test_a_user_error_on_one_rank_stops_every_rank_with_its_message(config: Config, tmp_path: Path) -> None:
    messages = run_ranks(tmp_path / "ranks", _missing_data_on_rank_1, config, tmp_path / "run")

    missing = tmp_path / "missing.src"
    assert messages == [f"rank 1: {missing}: no such file", f"{missing}: no such file"]
    assert not (tmp_path / "run").exists(), "nothing was written"


def test_a_failing_rank_ends_the_other_with_an_error_instead_of_a_hang(config: Config, tmp_path: Path) -> None:
    # Rank 0 waits in the step's stop decision for a rank that has gone: its closed connection fails that
    # collective at once (typically in 0.1 s); the collective's timeout bounds the rare case it is missed.
    codes, took, _ = start_ranks(tmp_path / "ranks", _fail_on_rank_1, with_train(config, max_steps=100), tmp_path / "run",
                                 collective_s=10)
    assert None not in codes and 0 not in codes, f"exit codes {codes} after {took:.1f} s"
    assert took < 15


# --- through torchrun and the command line ---------------------------------------------------------------


def test_torchrun_trains_on_two_processes_through_the_cli(config: Config, tmp_path: Path) -> None:
    recipe, out = tmp_path / "tiny.toml", tmp_path / "run"
    recipe.write_text(to_toml(config), encoding="utf-8")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={RANKS}"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}

    done = subprocess.run([*torchrun, "-m", "seq2seq", "train", "--config", str(recipe), "--output", str(out),
                           "--max-steps", "4", "-q"], capture_output=True, text=True, timeout=60, env=environment)

    assert done.returncode == 0, done.stderr[-2000:]
    assert set(done.stdout.splitlines()) == {str(out / "best.pt")}
    assert sorted(path.name for path in out.iterdir()) == sorted(runfolder.RUN_FILES)
    last = checkpoint.load(out / "last.pt")
    assert (last.step, last.training["world_size"]) == (4, RANKS)
    translated = CliRunner().invoke(app, ["translate", "-m", str(out / "best.pt"), "-i", config.data.valid_source, "-q"])
    assert translated.exit_code == 0 and len(translated.stdout.splitlines()) == 4, translated.output


def test_one_process_trains_on_the_gpu_when_auto_sees_one_and_on_the_cpu_otherwise(monkeypatch) -> None:
    # only the choice is checked here (no GPU on this machine): nothing is moved to the device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with distributed.join("auto", "auto") as world:
        assert world.device == torch.device("cpu")
    with pytest.raises(ConfigError, match="device cuda: this torch sees no CUDA GPU"):
        with distributed.join("auto", "cuda"):
            pass
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with distributed.join("auto", "auto") as world:
        assert world.device == torch.device("cuda")
    with distributed.join("auto", "cpu") as world:
        assert world.device == torch.device("cpu")
