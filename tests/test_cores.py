"""Torch threads follow the cores other programs leave free: the arithmetic, the watch, and training's use of it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from seq2seq import DataReady, cores, load, training
from seq2seq.config import Config, ModelConfig, SearchConfig, TokenizerConfig, TrainConfig
from seq2seq.cores import CoreWatch, CpuTimes, ThreadsChanged, free_cores, read_times, threads_for
from seq2seq.tokenizer import Tokenizers
from seq2seq.translator import Translator
from tests.conftest import save_untrained_model

TWO_CPUS = frozenset({0, 1})


@pytest.fixture(autouse=True)
def two_threads() -> Iterator[None]:
    """Every test starts with torch on two threads and leaves torch as it found it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_busy_time_is_read_for_this_process_cpus_alone(tmp_path: Path) -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice: idle and iowait are the free time;
    # the aggregate "cpu" line and cpu2 (not ours) are left out
    stat = tmp_path / "stat"
    stat.write_text("cpu  900 900 900 900 900 900 900 900 0 0\n"
                    "cpu0 100 0 50 1000 20 5 5 40 0 0\n"
                    "cpu1 10 10 10 3000 0 0 0 0 0 0\n"
                    "cpu2 700 0 0 0 0 0 0 0 0 0\n"
                    "intr 12345 0 0\nctxt 999\n")
    times = read_times(TWO_CPUS, stat)
    assert times is not None
    assert times.busy == pytest.approx((100 + 50 + 5 + 5 + 40 + 10 + 10 + 10) / os.sysconf("SC_CLK_TCK"))


def test_without_proc_stat_there_is_no_reading(tmp_path: Path) -> None:
    assert read_times(TWO_CPUS, tmp_path / "missing") is None


def test_the_cores_others_used_are_the_busy_time_less_this_process_own() -> None:
    # over 2 s: the two CPUs were busy 3.0 s, 2.0 of them ours: the others used half a core
    free, others = free_cores(CpuTimes(busy=10.0, own=1.0, wall=100.0), CpuTimes(busy=13.0, own=3.0, wall=102.0), 2)
    assert (free, others) == (pytest.approx(1.5), pytest.approx(0.5))


@pytest.mark.parametrize(("free", "asked", "threads"), [
    (2.0, 2, 2), (1.6, 2, 2), (1.33, 2, 1), (0.2, 2, 1), (0.0, 8, 1), (7.4, 4, 4), (5.7, 8, 6),
])
def test_a_core_counts_when_more_than_half_of_it_is_free(free: float, asked: int, threads: int) -> None:
    assert threads_for(free, asked) == threads


class Machine:
    """A fake /proc/stat: each reading is one second later, and other programs use `others` cores meanwhile
    (this process keeps one core busy)."""

    def __init__(self) -> None:
        self.others, self.now = 0.0, CpuTimes(busy=0.0, own=0.0, wall=0.0)

    def read(self, cpus: frozenset[int]) -> CpuTimes:
        self.now = CpuTimes(self.now.busy + 1.0 + self.others, self.now.own + 1.0, self.now.wall + 1.0)
        return self.now


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> Machine:
    monkeypatch.setattr(cores, "INTERVAL_S", 0.0)  # every look reads
    return Machine()


def test_a_busy_neighbour_takes_a_thread_and_gives_it_back_when_it_stops(machine: Machine) -> None:
    changes: list[ThreadsChanged] = []
    watch = CoreWatch(changes.append, read=machine.read, cpus=TWO_CPUS)
    machine.others = 0.9
    watch.look()
    assert torch.get_num_threads() == 2, "one look is a burst, not a busy neighbour"
    watch.look()
    assert torch.get_num_threads() == 1
    assert changes == [ThreadsChanged(threads=1, was=2, others=pytest.approx(0.9), cores=2)]
    machine.others = 0.0
    watch.look()
    watch.look()
    assert torch.get_num_threads() == 2 and changes[-1].threads == 2 and changes[-1].was == 1


def test_an_idle_machine_and_a_short_burst_change_nothing(machine: Machine) -> None:
    changes: list[ThreadsChanged] = []
    watch = CoreWatch(changes.append, read=machine.read, cpus=TWO_CPUS)
    for others in (0.0, 0.1, 1.0, 0.0, 1.0, 0.2):
        machine.others = others
        watch.look()
    assert torch.get_num_threads() == 2 and changes == []


def test_pinned_threads_are_set_never_watched_and_put_back(machine: Machine) -> None:
    machine.others = 1.0
    with CoreWatch(read=machine.read, cpus=TWO_CPUS, pinned=3) as watch:
        assert torch.get_num_threads() == 3
        for _ in range(3):
            watch.look()
        assert torch.get_num_threads() == 3 and machine.now.wall == 0.0
    assert torch.get_num_threads() == 2


def test_one_thread_asked_is_never_watched(machine: Machine) -> None:
    torch.set_num_threads(1)
    machine.others = 1.0
    watch = CoreWatch(read=machine.read, cpus=TWO_CPUS)
    for _ in range(3):
        watch.look()
    assert machine.now.wall == 0.0, "nothing read"


@pytest.fixture
def config(tmp_path: Path, make_data_config) -> Config:
    (tmp_path / "data").mkdir()
    data = make_data_config(tmp_path / "data", train=100, valid=10, seed=3, max_length=50)
    return Config(data=data, tokenizer=TokenizerConfig(vocab_size=60), model=ModelConfig(emb_dim=16, hidden_dim=32),
                  train=TrainConfig(batch_tokens=400, max_steps=6, valid_every=6, log_every=6),
                  search=SearchConfig(max_length_constant=5)).validate()


def busy_neighbour(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reading of /proc/stat says other programs use all of this process's cores but one."""
    clock = {"wall": 0.0, "busy": 0.0}

    def read(cpus: frozenset[int]) -> CpuTimes:
        clock["wall"] += 1.0
        clock["busy"] += len(cpus) - 1.0
        return CpuTimes(clock["busy"], 0.0, clock["wall"])

    monkeypatch.setattr(cores, "INTERVAL_S", 0.0)
    monkeypatch.setattr(cores, "read_times", read)


def test_training_follows_the_free_cores_and_says_so(config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    busy_neighbour(monkeypatch)
    events: list = []
    training.train(config, tmp_path / "run", report=events.append)
    ready = next(event for event in events if isinstance(event, DataReady))
    changes = [event for event in events if isinstance(event, ThreadsChanged)]
    assert ready.threads == 2
    assert [(change.threads, change.was) for change in changes] == [(1, 2)]
    assert torch.get_num_threads() == 2, "torch's count is put back after the run"


def test_threads_set_by_the_user_stay_as_set(config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    busy_neighbour(monkeypatch)
    pinned = dataclasses.replace(config, train=dataclasses.replace(config.train, threads=2))
    events: list = []
    training.train(pinned, tmp_path / "run", report=events.append)
    assert not [event for event in events if isinstance(event, ThreadsChanged)]
    assert torch.get_num_threads() == 2


@pytest.fixture
def translator(tmp_path: Path, tokenizers: Tokenizers) -> Translator:
    path = save_untrained_model(tmp_path / "model.pt", tokenizers, SearchConfig(beam_size=2, batch_size=2, max_length_constant=4))
    return load(path)


LINES = ["a cat", "the dog runs", "cat", "a big dog", "the cat sat", "dogs"]


def test_translation_in_one_process_follows_the_free_cores(translator: Translator, monkeypatch: pytest.MonkeyPatch) -> None:
    alone = translator.translate(LINES)
    busy_neighbour(monkeypatch)
    changes: list[ThreadsChanged] = []
    beside = translator.translate(LINES, chunk_lines=2, on_threads=changes.append)
    assert [(change.threads, change.was) for change in changes] == [(1, 2)]
    assert [[hyp.text for hyp in line] for line in beside] == [[hyp.text for hyp in line] for line in alone]
    assert torch.get_num_threads() == 2, "torch's count is put back after the translation"


def test_translation_threads_pinned_are_not_followed(translator: Translator, monkeypatch: pytest.MonkeyPatch) -> None:
    busy_neighbour(monkeypatch)
    changes: list[ThreadsChanged] = []
    seen: list[int] = []
    for _ in translator.stream(LINES, chunk_lines=2, threads=1, on_threads=changes.append):
        seen.append(torch.get_num_threads())
    assert changes == [] and set(seen) == {1}
    assert torch.get_num_threads() == 2


def test_the_command_says_when_it_translates_on_fewer_threads_and_pins_on_request(
        translator: Translator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    source = tmp_path / "in.txt"
    source.write_text("".join(line + "\n" for line in LINES))
    model = tmp_path / "model.pt"
    busy_neighbour(monkeypatch)
    base = ["translate", "-m", str(model), "-i", str(source), "--workers", "1", "--batch-size", "2"]
    followed = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "followed.txt")])
    pinned = CliRunner().invoke(app, [*base, "--threads", "2", "-o", str(tmp_path / "pinned.txt")])
    assert followed.exit_code == 0 and pinned.exit_code == 0, followed.stderr + pinned.stderr
    cores = len(os.sched_getaffinity(0))
    assert (f"other programs are using {cores - 1.0:.1f} of {cores} cores: translating on 1 CPU thread (was 2"
            in " ".join(followed.stderr.split()))
    assert "other programs" not in pinned.stderr
    assert (tmp_path / "followed.txt").read_text() == (tmp_path / "pinned.txt").read_text()
