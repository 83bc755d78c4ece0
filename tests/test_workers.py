"""Translation in forked worker processes: the same results in the same order, work really shared, failures told."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from seq2seq import checkpoint
from seq2seq.config import Config, ModelConfig, SearchConfig
from seq2seq.errors import ConfigError, DataError, WorkerDied
from seq2seq.tokenizer import Tokenizers
from seq2seq.translation import translate
from seq2seq.workers import AUTO_WORKERS_MAX, map_in_order, worker_count

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="workers are forked")


def _chunk(*batches: list[int]) -> list[list[int]]:
    """A chunk whose batches hold these items (the items stand for a batch's sources)."""
    return [list(batch) for batch in batches]


def _searched(chunks, job, *, workers: int):
    """Each chunk with its batches' results, as translation maps its chunks."""
    return map_in_order(job, chunks, lambda chunk: chunk, workers)


def _with_pid(sources: list[int]) -> list[tuple[int, int]]:
    return [(os.getpid(), item) for item in sources]


_together: threading.Barrier | None = None  # set before the workers fork; they inherit it


def _with_pid_together(sources: list[int]) -> list[tuple[int, int]]:
    """Batches 3 and 4 each wait until the other is being searched too: only two processes at once pass."""
    if _together is not None and {3, 4} & set(sources):
        _together.wait()
    return _with_pid(sources)


def test_batches_go_to_other_processes_and_come_back_in_order() -> None:
    """A first chunk of one batch stays in this process; from the first chunk of two batches on, workers search."""
    chunks = [_chunk([1, 2]), _chunk([3], [4, 5], [6]), _chunk([7, 8], [9]), _chunk([10])]

    global _together
    _together = multiprocessing.get_context("fork").Barrier(2, timeout=30)
    try:
        found = [(chunk, results) for chunk, results in _searched(iter(chunks), _with_pid_together, workers=2)]
    finally:
        _together = None

    assert [chunk for chunk, _ in found] == chunks
    items = [item for _, results in found for batch in results for _, item in batch]
    assert items == list(range(1, 11))
    pid_of = {item: pid for _, results in found for batch in results for pid, item in batch}
    assert pid_of[1] == pid_of[2] == os.getpid()
    assert os.getpid() not in [pid_of[item] for item in range(3, 11)]
    assert pid_of[3] != pid_of[4], "two workers searched at once"


def test_one_worker_searches_in_this_process() -> None:
    found = list(_searched(iter([_chunk([1], [2], [3])]), _with_pid, workers=1))
    assert {pid for batch in found[0][1] for pid, _ in batch} == {os.getpid()}


def _fails_on_three(sources: list[int]) -> list[int]:
    if 3 in sources:
        raise DataError("line 3: bad")
    return sources


def _dies(sources: list[int]) -> list[int]:
    os._exit(3)


def test_an_error_in_a_worker_arrives_as_itself() -> None:
    with pytest.raises(DataError, match="^line 3: bad$"):
        list(_searched(iter([_chunk([1], [2]), _chunk([3], [4])]), _fails_on_three, workers=2))


def test_a_worker_that_dies_is_one_clear_error() -> None:
    with pytest.raises(WorkerDied, match="worker process died.*--workers 1"):
        list(_searched(iter([_chunk([1], [2])]), _dies, workers=2))


AFTER_PARALLEL_WORK = """
import torch
from seq2seq.workers import WorkerPool

torch.set_num_threads(2)
square = torch.randn(512, 512)
for _ in range(3):
    square @ square  # this thread now owns OpenMP threads


def job(size):
    square = torch.randn(size, size)
    return (square @ square).shape[0], torch.get_num_threads()


pool = WorkerPool(job, workers=2, threads=2)
print([pool.result(pool.submit(512)) for _ in range(4)])
pool.close()
"""


def test_workers_of_two_threads_run_after_parallel_work_in_the_parent() -> None:
    """libgomp's thread pool does not survive fork: workers forked from the thread that ran the parent's
    products would hang at their first product of two threads (in a child process here, so that a hang
    is a timeout, not a stuck suite)."""
    done = subprocess.run([sys.executable, "-c", AFTER_PARALLEL_WORK], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str([(512, 2)] * 4)


@pytest.mark.parametrize("workers", [1, 2])
def test_chunks_read_before_a_bad_line_still_come_out(workers: int) -> None:
    """A read error (a bad line on stdin) ends the run only after the chunks read before it, the one queued included."""
    def chunks():
        yield _chunk([1], [2])
        yield _chunk([3], [4])
        raise DataError("<stdin>:5: bad")

    found = []
    with pytest.raises(DataError, match="<stdin>:5"):
        for _, results in _searched(chunks(), _with_pid, workers=workers):
            found += [item for batch in results for _, item in batch]
    assert found == [1, 2, 3, 4]


def test_worker_count_follows_the_cores_on_the_cpu_and_refuses_many_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    assert worker_count(0, cpu) == (AUTO_WORKERS_MAX if os.uname().sysname == "Linux" else 1)
    assert worker_count(3, cpu) == 3
    assert worker_count(0, gpu) == 1 and worker_count(1, gpu) == 1
    with pytest.raises(ConfigError, match="--workers 2 is for translating on the CPU"):
        worker_count(2, gpu)
    with pytest.raises(ConfigError, match="0 \\(one per core\\) or more"):
        worker_count(-1, cpu)


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_workers_translate_as_one_process_does(make_model, tokenizers: Tokenizers, corpus, quantize: str) -> None:
    """Several chunks of several batches, empty lines, n-best lists and attention: all equal, in input order."""
    vocab = tokenizers.src.vocab_size
    model = make_model(src_vocab=vocab, tgt_vocab=vocab, scale=0.5)
    lines = corpus[0][:30] + ["", ""] + corpus[0][30:60]
    search = SearchConfig(beam_size=3, batch_size=4, quantize=quantize)

    def run(workers: int) -> list:
        return list(translate(model, tokenizers, lines, search, nbest=2, chunk_lines=16, attention=True, workers=workers))

    alone, shared = run(1), run(2)

    assert [[(t.text, t.score, t.tokens) for t in nbest] for nbest in shared] == \
           [[(t.text, t.score, t.tokens) for t in nbest] for nbest in alone]
    assert all(torch.equal(a.attention.weights, b.attention.weights)
               for nbest_a, nbest_b in zip(alone, shared) for a, b in zip(nbest_a, nbest_b) if a.attention)
    assert len({nbest[0].text for nbest in alone}) > 10, "outputs differ, so a mix-up would show"


def test_cli_workers_give_the_same_file(tokenizers: Tokenizers, corpus, tmp_path: Path) -> None:
    config = Config(model=ModelConfig(emb_dim=8, hidden_dim=16), search=SearchConfig(beam_size=3, batch_size=8))
    torch.manual_seed(0)
    model = checkpoint.build_model(config, tokenizers)
    with torch.no_grad():
        for param in model.parameters():
            param.uniform_(-0.5, 0.5)
    model_file = tmp_path / "model.pt"
    checkpoint.save(model_file, config=config, tokenizers=tokenizers, model=model, step=1)
    source = tmp_path / "in.txt"
    source.write_text("".join(line + "\n" for line in corpus[0][:100]))
    outputs = []
    for workers in ("1", "2"):
        output = tmp_path / f"out{workers}.txt"
        result = CliRunner().invoke(app, ["translate", "-m", str(model_file), "-i", str(source), "-o", str(output),
                                          "--workers", workers, "-q"])
        assert result.exit_code == 0, result.output
        outputs.append(output.read_text())
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) == 100
    assert len(set(outputs[0].splitlines())) > 10
