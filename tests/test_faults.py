"""Faults during training and writing: kills at any moment, a full disk, NaN losses and weights.

Whatever happens, a file with a final name (last.pt, best.pt, metrics.jsonl, a translation) is whole:
the previous version or the new one, never half of either.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bench import faultkit
from cli.main import app
from seq2seq import checkpoint, training, translation
from seq2seq.config import Config, ModelConfig, SearchConfig, TokenizerConfig, TrainConfig, to_toml
from seq2seq.errors import DataError
from seq2seq.model import Seq2Seq
from seq2seq.textio import atomic_write
from seq2seq.translator import Translator

runner = CliRunner()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, make_data_config) -> Config:
    """The smallest run that still trains: a few milliseconds a step, a save at every step."""
    data = make_data_config(tmp_path_factory.mktemp("data"), train=60, valid=3, seed=40, valid_words=3)
    return Config(
        data=data,
        tokenizer=TokenizerConfig(vocab_size=50),
        model=ModelConfig(emb_dim=8, hidden_dim=16),
        train=TrainConfig(lr=0.01, batch_tokens=200, max_steps=100_000, valid_every=1, log_every=1, threads=1),
        search=SearchConfig(batch_size=4, max_length_constant=3),
    ).validate()


def with_train(config: Config, **changes) -> Config:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


@pytest.fixture(scope="module", autouse=True)
def warm(config: Config, tmp_path_factory: pytest.TempPathFactory) -> None:
    """One step in this process first: the first optimizer imports torch._dynamo (~1 s), and forked children
    should spend their time training, not importing."""
    training.train(with_train(config, max_steps=1), tmp_path_factory.mktemp("warm"))


def _train(config: Config, out: Path, resume: bool) -> None:  # runs in a forked child
    training.train(config, out, resume=resume, overwrite=not resume)


def start_training(config: Config, out: Path) -> multiprocessing.Process:
    """Train in a forked child (resuming when there is a last.pt): a fresh interpreter would spend
    ~2 s importing torch on this machine, and twenty of them would not fit the suite's budget."""
    child = multiprocessing.get_context("fork").Process(target=_train, args=(config, out, (out / "last.pt").exists()))
    child.start()
    return child


def assert_whole_run_folder(out: Path, *, ended: bool = False) -> int:
    """Every file with a final name is whole (the fault-injection bench's check), and with `ended` (the run ended by
    itself) no temporary file or lock is left; returns last.pt's step (0 when there is none yet)."""
    assert not faultkit.problems_in(out, ended=ended)
    return faultkit.last_step(out) or 0


def test_killing_training_at_random_moments_never_leaves_a_broken_file(config: Config, tmp_path: Path) -> None:
    # 20 SIGKILLs at random moments (fixed seed: the same moments each time, up to the machine's timing). With a
    # save at every step, a good share of them land inside a save. Each run resumes the killed one, so the
    # resume path itself gets killed too; a kill never loses a step that last.pt already held.
    rng, out, steps = random.Random(5), tmp_path / "run", []
    for _ in range(20):
        child = start_training(config, out)
        time.sleep(rng.uniform(0.05, 0.6))
        child.kill()
        child.join()
        assert child.exitcode == -signal.SIGKILL, "the run was still going (no error of its own)"
        steps.append(assert_whole_run_folder(out))
    assert steps == sorted(steps) and steps[-1] > 0, steps


def _kill_at_rename(config: Config, out: Path) -> None:  # runs in a forked child
    real_replace = os.replace

    def replace(source, target) -> None:
        if Path(target).name == "last.pt" and Path(target).exists():
            os.kill(os.getpid(), signal.SIGKILL)  # the new last.pt is written and fsynced, not yet renamed
        real_replace(source, target)

    os.replace = replace
    training.train(config, out)


def test_a_kill_between_writing_and_renaming_keeps_the_previous_checkpoint(config: Config, tmp_path: Path) -> None:
    out = tmp_path / "run"
    child = multiprocessing.get_context("fork").Process(target=_kill_at_rename, args=(config, out))
    child.start()
    child.join(timeout=60)

    assert child.exitcode == -signal.SIGKILL
    assert assert_whole_run_folder(out) == 1, "last.pt is still step 1's"
    assert [path.name for path in out.glob(".last.pt.*.tmp")], "the unfinished save is left as a temporary file"

    training.train(with_train(config, max_steps=2), out, resume=True)
    assert not list(out.glob(".*.tmp")), "the next run clears temporary files a killed save left behind"


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tokenizers, tmp_path: Path) -> None:
    config = Config(model=ModelConfig(emb_dim=8, hidden_dim=16))
    path = tmp_path / "model.pt"
    checkpoint.save(path, config=config, tokenizers=tokenizers, model=checkpoint.build_model(config, tokenizers), step=1)
    before = path.read_bytes()

    with pytest.raises(DataError) as error, faultkit.filled_disk(faultkit.DiskFault("model.pt", "part-way")):
        checkpoint.save(path, config=config, tokenizers=tokenizers, model=checkpoint.build_model(config, tokenizers), step=2)

    assert str(error.value) == f"{path}: could not be written (No space left on device); its previous content is intact"
    assert path.read_bytes() == before and checkpoint.load(path).step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "the temporary file is gone"


def test_a_full_disk_creates_no_new_file_and_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"new.txt: could not be written \(No space left on device\); nothing was written"):
        with faultkit.filled_disk(faultkit.DiskFault("new.txt", "at the first byte")), atomic_write(tmp_path / "new.txt") as file:
            file.write("a line\n")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_stops_training_with_one_line_and_the_checkpoints_intact(config: Config, tmp_path: Path) -> None:
    out, recipe = tmp_path / "run", tmp_path / "tiny.toml"
    recipe.write_text(to_toml(config), encoding="utf-8")

    with faultkit.filled_disk(faultkit.DiskFault("last.pt", "part-way", spare=1)):  # the second save finds the disk full
        result = runner.invoke(app, ["train", "--config", str(recipe), "--output", str(out), "--max-steps", "5", "-q"])

    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == (f"error: {out / 'last.pt'}: could not be written (No space left on device); "
                                     "its previous content is intact")
    assert assert_whole_run_folder(out, ended=True) == 1


def test_translate_onto_a_full_disk_keeps_the_old_output(tokenizers, tmp_path: Path) -> None:
    config = Config(model=ModelConfig(emb_dim=8, hidden_dim=16), search=SearchConfig(beam_size=1))
    model = tmp_path / "model.pt"
    checkpoint.save(model, config=config, tokenizers=tokenizers, model=checkpoint.build_model(config, tokenizers), step=1)
    source, output = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("the cat\n" * 200, encoding="utf-8")
    output.write_text("an earlier translation\n", encoding="utf-8")

    with faultkit.filled_disk(faultkit.DiskFault("out.txt", "part-way")):
        result = runner.invoke(app, ["translate", "-m", str(model), "-i", str(source), "-o", str(output)])

    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == (f"error: {output}: could not be written (No space left on device); "
                                     "its previous content is intact")
    assert output.read_text(encoding="utf-8") == "an earlier translation\n"


# --- non-finite losses and weights -----------------------------------------------------------------


def poison_steps(monkeypatch: pytest.MonkeyPatch, bad) -> None:
    """Make the model's training forward pass return NaN logits on the updates `bad(step)` picks."""
    real_forward, calls = Seq2Seq.forward, itertools.count(1)

    def forward(self, *args):
        logits = real_forward(self, *args)
        return logits * float("nan") if self.training and bad(next(calls)) else logits

    monkeypatch.setattr(Seq2Seq, "forward", forward)


def all_finite(path: Path) -> bool:
    return all(bool(torch.isfinite(value).all()) for value in checkpoint.load(path).model.state_dict().values())


def test_a_nan_loss_skips_the_update_and_is_reported(config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison_steps(monkeypatch, lambda step: step in (2, 3))
    events: list = []

    finished = training.train(with_train(config, max_steps=6, valid_every=3), tmp_path, report=events.append)

    assert finished.reason == "max_steps"
    skipped = [event for event in events if isinstance(event, training.NonFinite)]
    assert [(event.step, event.in_a_row) for event in skipped] == [(2, 1), (3, 2)]
    assert all(event.loss != event.loss for event in skipped), "the loss reported is the NaN"
    assert sum(event.skipped for event in events if isinstance(event, training.StepsDone)) == 2
    last = checkpoint.load(tmp_path / "last.pt")
    adam_steps = {float(state["step"]) for state in last.training["optimizer"]["state"].values()}
    assert adam_steps == {4.0}, "six steps, two of them without an update"
    assert all_finite(tmp_path / "last.pt") and all_finite(tmp_path / "best.pt")


def test_too_many_nonfinite_steps_in_a_row_stop_training(config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison_steps(monkeypatch, lambda step: step >= 3)
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(to_toml(with_train(config, valid_every=2, max_nonfinite=3)), encoding="utf-8")
    out = tmp_path / "run"

    result = runner.invoke(app, ["train", "--config", str(recipe), "--output", str(out), "-q"])

    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == (f"error: training stopped at step 5: the loss, gradients or weights went NaN or "
                                     f"infinite (try a lower --set train.lr=...); {out / 'last.pt'} holds the last finite weights")
    assert checkpoint.load(out / "last.pt").step == 4, "step 4 skipped its update: its weights are step 2's, finite"
    assert all_finite(out / "last.pt") and all_finite(out / "best.pt")


def test_weights_that_went_nan_are_never_saved(config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_step, updates = torch.optim.Adam.step, itertools.count(1)

    def step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        if next(updates) == 3:  # the third update leaves NaN weights behind
            with torch.no_grad():
                for group in self.param_groups:
                    for param in group["params"]:
                        param.fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", step)

    finished = training.train(with_train(config, max_steps=10, valid_every=2), tmp_path)

    assert (finished.reason, finished.step) == ("non_finite", 4)
    assert checkpoint.load(tmp_path / "last.pt").step == checkpoint.load(tmp_path / "best.pt").step == 2
    assert all_finite(tmp_path / "last.pt") and all_finite(tmp_path / "best.pt")


# --- out of memory (a GPU's; simulated here by raising torch's own error) ----------------------------


def run_out_of_memory(monkeypatch: pytest.MonkeyPatch, module, name: str, *, size, when) -> list[int]:
    """Make `module.name` raise torch.OutOfMemoryError on the calls that `when(size(args))` picks, `size`
    reading the batch size from the call's arguments; returns the batch sizes it was called with."""
    real, sizes = getattr(module, name), []

    def tight(*args, **kwargs):
        batch = size(args)
        sizes.append(batch)
        if when(batch):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, tight)
    return sizes


def test_training_out_of_memory_stops_with_one_line_and_the_checkpoints_intact(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = itertools.count(1)
    run_out_of_memory(monkeypatch, training, "update", size=lambda args: 0,  # the third update fails, whatever its size
                      when=lambda batch: next(calls) == 3)
    recipe, out = tmp_path / "tiny.toml", tmp_path / "run"
    recipe.write_text(to_toml(with_train(config, valid_every=1)), encoding="utf-8")

    result = runner.invoke(app, ["train", "--config", str(recipe), "--output", str(out), "-q"])

    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: out of memory on cpu at step 3, a batch of ")
    assert line.endswith("lower train.batch_tokens (now 200; raise train.accumulate, now 1, to keep the update's size) "
                         "or data.max_length (now 100); the checkpoints written so far are intact")
    assert assert_whole_run_folder(out, ended=True) == 2


def test_translation_out_of_memory_halves_the_batch_and_still_translates_every_line(
    tokenizers, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = Config(model=ModelConfig(emb_dim=8, hidden_dim=16), search=SearchConfig(beam_size=2, batch_size=8,
                                                                                      max_length_constant=3))
    torch.manual_seed(0)
    model = checkpoint.build_model(config, tokenizers)
    words = "the cat sat on a mat while the dog ran far away past big houses".split()
    lines = [" ".join(words[i : i + 1 + i % 5]) for i in range(11)]
    translator = Translator(model, tokenizers, config.search)
    expected = [best.text for best, in translator.translate(lines)]
    sizes = run_out_of_memory(monkeypatch, translation, "search_batch", size=lambda args: len(args[1]),
                              when=lambda batch: batch > 2)

    assert [best.text for best, in translator.translate(lines)] == expected
    assert sizes[:4] == [8, 4, 2, 2], "the batch of 8 is halved until it fits"
    assert sum(size for size in sizes if size <= 2) == len(lines), "every line translated once, in a batch that fit"


def test_out_of_memory_in_the_attention_pass_halves_the_batch_too(tokenizers, monkeypatch: pytest.MonkeyPatch) -> None:
    """--alignment and --attention-plot recompute attention after the search, in a pass of its own."""
    search = SearchConfig(beam_size=2, batch_size=8, max_length_constant=3)
    torch.manual_seed(0)
    model = checkpoint.build_model(Config(model=ModelConfig(emb_dim=8, hidden_dim=16), search=search), tokenizers)
    words = "the cat sat on a mat while the dog ran far away past big houses".split()
    lines = [" ".join(words[i : i + 1 + i % 5]) for i in range(11)]

    def everything() -> list[tuple[str, list[int], torch.Tensor]]:
        return [(best.text, best.attention.src_tokens, best.attention.weights)
                for (best,) in translation.translate(model, tokenizers, lines, search, attention=True)]

    expected = everything()
    sizes = run_out_of_memory(monkeypatch, translation, "attention_batch", size=lambda args: len(args[1]),
                              when=lambda batch: batch > 2)
    searched = run_out_of_memory(monkeypatch, translation, "search_batch", size=lambda args: len(args[1]),
                                 when=lambda batch: False)
    found = everything()

    assert sizes[:4] == [8, 4, 2, 2], "the batch of 8 is halved until its attention fits"
    assert searched == [8, 3], "the search is not done again for the halves"
    assert [(text, src) for text, src, _ in found] == [(text, src) for text, src, _ in expected]
    assert all(torch.allclose(got, want, atol=1e-6) for (_, _, got), (_, _, want) in zip(found, expected))


def test_translation_out_of_memory_on_a_single_line_is_one_line(
    tokenizers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = Config(model=ModelConfig(emb_dim=8, hidden_dim=16), search=SearchConfig(beam_size=1))
    model = tmp_path / "model.pt"
    checkpoint.save(model, config=config, tokenizers=tokenizers, model=checkpoint.build_model(config, tokenizers), step=1)
    run_out_of_memory(monkeypatch, translation, "search_batch", size=lambda args: len(args[1]), when=lambda batch: True)

    result = runner.invoke(app, ["translate", "-m", str(model), "-o", str(tmp_path / "out.txt")], input="the cat\n")

    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == "error: out of memory on cpu translating a single line of 2 pieces: lower --max-source-pieces"
    assert not (tmp_path / "out.txt").exists()
