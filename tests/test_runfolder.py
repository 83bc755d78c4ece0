"""The run folder's owner writes the checkpoints a run keeps: the best by validation score, in a safe order."""

from __future__ import annotations

import json
from pathlib import Path

from seq2seq import checkpoint
from seq2seq.config import Config, ModelConfig, TrainConfig
from seq2seq.runfolder import RunFolder, kept_steps

SCORES = [(100, 10.0), (200, 30.0), (300, 20.0), (400, 5.0), (500, 25.0), (600, 15.0)]  # distinct validation BLEU


def _row(step: int, bleu: float, history: list[dict]) -> dict:
    best = bleu > max((row["valid_bleu"] for row in history), default=-1.0)
    return {"step": step, "valid_bleu": bleu, "valid_loss": 1.0, "bleu_signature": "sig", "best": best}


def test_keep_best_keeps_the_checkpoints_of_the_best_scoring_validations(tmp_path: Path, tokenizers) -> None:
    cfg = Config(model=ModelConfig(emb_dim=8, hidden_dim=16), train=TrainConfig(keep_best=3))
    folder = RunFolder(tmp_path)
    folder.create(cfg, overwrite=False)
    model = checkpoint.build_model(cfg, tokenizers)
    history: list[dict] = []
    kept_after = []
    for step, bleu in SCORES:
        history.append(_row(step, bleu, history))
        folder.save(cfg, tokenizers, model, step=step, history=history, training={}, hypotheses=[f"output at {step}"])
        kept_after.append(sorted(int(path.stem[5:]) for path in tmp_path.glob("step-*.pt")))

    assert kept_after == [[100], [100, 200], [100, 200, 300], [100, 200, 300], [200, 300, 500], [200, 300, 500]]
    assert checkpoint.load(folder.best).step == 200 and checkpoint.load(folder.best).info["valid_bleu"] == 30.0
    assert checkpoint.load(folder.last).step == 600
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [s for s, _ in SCORES]
    assert (tmp_path / "last.valid.txt").read_text() == "output at 600\n"
    assert (tmp_path / "best.valid.txt").read_text() == "output at 200\n", "the outputs of best.pt's validation"


def test_a_save_without_validation_writes_last_pt_alone(tmp_path: Path, tokenizers) -> None:
    cfg = Config(model=ModelConfig(emb_dim=8, hidden_dim=16), train=TrainConfig(keep_best=3))
    folder = RunFolder(tmp_path)
    folder.create(cfg, overwrite=False)
    model = checkpoint.build_model(cfg, tokenizers)
    folder.save(cfg, tokenizers, model, step=7, history=[], training={"loop": {}})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.toml", "last.pt"]
    assert checkpoint.load(folder.last).training == {"loop": {}}


def test_ties_keep_the_earlier_validation() -> None:
    history = [{"step": 1, "valid_bleu": 0.0}, {"step": 2, "valid_bleu": 0.0}, {"step": 3, "valid_bleu": 1.0}]
    assert kept_steps(history, 2) == {1, 3}


def test_error_rates_and_the_loss_keep_their_lowest() -> None:
    history = [{"step": 1, "valid_wer": 30.0, "valid_loss": 2.0}, {"step": 2, "valid_wer": 10.0, "valid_loss": 3.0},
               {"step": 3, "valid_wer": 20.0, "valid_loss": 1.0}]
    assert kept_steps(history, 2, "wer") == {2, 3}
    assert kept_steps(history, 1, "loss") == {3}


def test_one_run_per_folder_and_a_killed_runs_lock_is_no_obstacle(tmp_path: Path) -> None:
    """Two real processes: the second `train --overwrite` is refused naming the first's pid; once the first is
    killed (SIGKILL: no chance to clean up), the next start goes ahead."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import synthetic_pairs

    src, tgt = synthetic_pairs(300, seed=3)
    for name, lines in (("train.src", src), ("train.tgt", tgt)):
        (tmp_path / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "seq2seq", "train", "--source", "train.src", "--target", "train.tgt",
               "--valid-source", "train.src", "--valid-target", "train.tgt", "--output", str(out), "--vocab-size", "60",
               "--emb-dim", "8", "--hidden-dim", "16", "--no-cache", "-q", "--overwrite"]
    first = subprocess.Popen([*command, "--max-steps", "100000"], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.toml").exists():  # written once the lock is held and the data read
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.stderr else ""
            time.sleep(0.1)
        second = subprocess.run([*command, "--max-steps", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip() == (f"error: {out} is in use by another training run (pid {first.pid}); wait for it "
                                         "to end or train into another folder")
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    third = subprocess.run([*command, "--max-steps", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr
    assert not (out / ".lock").exists(), "a run that ends lets the folder go"
