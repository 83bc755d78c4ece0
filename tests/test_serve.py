"""`seq2seq serve`: requests batched across callers answer as `Translator.translate` does, every error is one
JSON line with its status, and SIGTERM lets the requests in flight finish."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from starlette.testclient import TestClient  # noqa: E402

from cli.main import app  # noqa: E402
from cli.serve import _served  # noqa: E402
from cli.serving import Limits, application  # noqa: E402
from seq2seq import checkpoint  # noqa: E402
from seq2seq.batching import Batcher, OverLimit  # noqa: E402
from seq2seq.config import SearchConfig  # noqa: E402
from seq2seq.tokenizer import Tokenizers  # noqa: E402
from seq2seq.translation import Translation  # noqa: E402
from seq2seq.translator import Translator  # noqa: E402
from tests.conftest import save_untrained_model  # noqa: E402

LIMITS = Limits(max_lines=20, max_line_chars=200, max_body_bytes=4_000, max_beam=8)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory, tokenizers: Tokenizers) -> Path:
    """An untrained tiny model with a beam of 3 and batches of 4, so that a round spans several batches."""
    return save_untrained_model(
        tmp_path_factory.mktemp("model") / "tiny.pt", tokenizers, SearchConfig(beam_size=3, batch_size=4, max_length_constant=3), step=7)


@pytest.fixture(scope="module")
def lines(corpus: tuple[list[str], list[str]]) -> list[str]:
    return corpus[0][:12]


@pytest.fixture
def client(model_path: Path) -> Iterator[TestClient]:
    served = _served(model_path, device="cpu", max_wait_s=0.05, max_queued_lines=30, max_source_pieces=400)
    with TestClient(application({"tiny": served}, LIMITS)) as test_client:
        yield test_client


def _loaded(path: Path, **search: object) -> tuple:
    """A model file's model, tokenizers and search settings with `search`: a Translator's arguments."""
    loaded = checkpoint.load(path)
    return loaded.model, loaded.tokenizers, replace(loaded.config.search, **search)


# A round ends early once a batch of lines waits: with batches of 64, these tests' rounds last their whole wait.
ROUND_WAITS = dict(batch_size=64)


class CountingTranslator(Translator):
    """A translator that counts its `translate` calls: one per group of requests searched together."""

    calls = 0

    def translate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().translate(*args, **kwargs)


def test_requests_in_one_round_are_searched_together_by_their_options(model_path: Path, lines: list[str]) -> None:
    translator = CountingTranslator(*_loaded(model_path, **ROUND_WAITS), device="cpu")
    batcher = Batcher(translator, max_wait_s=0.5)
    asks = [dict(), dict(options={"beam_size": 1}), dict(nbest=2, alignment=True), dict(options={"beam_size": 3}),
            dict(nbest=2, options={"sample": True, "seed": 3})]
    futures = [(lines[start : start + 3], ask, batcher.submit(lines[start : start + 3], **ask))
               for start in range(0, 12, 3) for ask in asks]
    results = [(chunk, ask, future.result(timeout=30)) for chunk, ask, future in futures]
    batcher.close()
    # beam 3 (the model's, asked for or not), beam 1, n-best with alignments, and each sampled request alone:
    # a line's samples are drawn from its line number in the call
    assert translator.calls == 3 + 4
    for chunk, ask, got in results:
        alone = translator.translate(chunk, nbest=ask.get("nbest", 1), attention=ask.get("alignment", False),
                                     **ask.get("options", {}))
        assert [[(hyp.text, round(hyp.score, 4), hyp.alignment) for hyp in hyps] for hyps in got] == \
            [[(hyp.text, round(hyp.score, 4), hyp.alignment) for hyp in hyps] for hyps in alone]


def test_a_cancelled_request_leaves_the_rest_of_its_round_alone(model_path: Path, lines: list[str]) -> None:
    batcher = Batcher(Translator(*_loaded(model_path, **ROUND_WAITS), device="cpu"), max_wait_s=0.3)
    left, stayed = batcher.submit(lines[:4]), batcher.submit(lines[4:8])
    assert left.cancel()  # its caller went away while it waited
    assert [hyps[0].text for hyps in stayed.result(timeout=30)] == \
        [hyps[0].text for hyps in batcher.translator.translate(lines[4:8])]
    batcher.close()


def test_translate_answers_as_the_library_does(client: TestClient, model_path: Path, lines: list[str]) -> None:
    answers: dict[int, dict] = {}

    def ask(start: int) -> None:
        answers[start] = client.post("/translate", json={"text": lines[start : start + 3], "nbest": 2,
                                                         "alignment": True, "length_penalty": 0.5}).json()

    callers = [threading.Thread(target=ask, args=(start,)) for start in range(0, 12, 3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    expected = Translator(*_loaded(model_path), device="cpu").translate(lines, nbest=2, attention=True, length_penalty=0.5)
    got = [item for start in range(0, 12, 3) for item in answers[start]["translations"]]
    assert answers[0]["model"] == "tiny"
    assert [[(hyp["text"], round(hyp["score"], 4), [tuple(pair) for pair in hyp["alignment"]]) for hyp in item["nbest"]]
            for item in got] == \
        [[(hyp.text, round(hyp.score, 4), hyp.alignment) for hyp in hyps] for hyps in expected]
    assert all((item["text"], item["score"]) == (item["nbest"][0]["text"], item["nbest"][0]["score"]) for item in got)


BAD_REQUESTS = {
    "not JSON": (b'{"text": ["a"', 400, "not JSON"),
    "not UTF-8": ('{"text": ["caf\u00e9"]}'.encode("latin-1"), 400, "UTF-8"),
    "not an object": (b'["a"]', 422, "JSON object"),
    "text not a list": (b'{"text": "the cat"}', 422, "list of strings"),
    "a line not a string": (b'{"text": ["the cat", 3]}', 422, "list of strings"),
    "nbest a string": (b'{"text": ["a"], "nbest": "2"}', 422, "'nbest' must be a whole number"),
    "beam_size a string": (b'{"text": ["a"], "beam_size": "5"}', 422, "search.beam_size' must be int"),
    "beam_size 0": (b'{"text": ["a"], "beam_size": 0}', 422, "search.beam_size must be at least 1"),
    "nbest over the beam": (b'{"text": ["a"], "nbest": 4}', 422, "nbest must be from 1 to the beam size"),
    "unknown field": (b'{"text": ["a"], "beam": 2}', 422, "unknown field 'beam'"),
    "a server setting": (b'{"text": ["a"], "batch_size": 2}', 422, "unknown field 'batch_size'"),
    "unknown model": (b'{"text": ["a"], "model": "other"}', 422, "unknown model 'other'; this server has 'tiny'"),
    "too many lines": (json.dumps({"text": ["a"] * 21}).encode(), 413, "the limit is 20 a request"),
    "a line too long": (json.dumps({"text": ["a", "b" * 201]}).encode(), 413, "line 1 is 201 characters"),
    "a body too big": (json.dumps({"text": ["a"], "seed": 1, "pad": " " * 4_000}).encode(), 413, "4,000 (--max-body-bytes)"),
    "a beam too wide": (b'{"text": ["a"], "beam_size": 9}', 413, "beam_size 9 is over this server's limit of 8"),
}


@pytest.mark.parametrize("body, status, message", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_a_bad_request_gets_one_json_line_and_its_status(client: TestClient, body: bytes, status: int, message: str) -> None:
    answer = client.post("/translate", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in error


def test_a_body_streamed_past_the_limit_is_refused_without_a_length(client: TestClient) -> None:
    chunks = iter([b'{"text": ["', b"a" * 3_000, b"a" * 3_000, b'"]}'])
    answer = client.post("/translate", content=chunks)
    assert answer.status_code == 413 and "over the limit of 4,000 bytes" in answer.json()["error"]


def test_a_full_queue_is_503(client: TestClient, model_path: Path) -> None:
    served = _served(model_path, device="cpu", max_wait_s=0, max_queued_lines=2, max_source_pieces=0)
    with TestClient(application({"tiny": served}, LIMITS)) as small:
        answer = small.post("/translate", json={"text": ["a", "b", "c"]})
    assert answer.status_code == 503 and "try again" in answer.json()["error"]


def test_health_models_openapi_and_unknown_paths(client: TestClient, model_path: Path) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    (described,) = client.get("/models").json()["models"]
    assert (described["name"], described["model"], described["step"]) == ("tiny", str(model_path), 7)
    assert described["parameters"] > 0 and described["vocabulary"]["joint"]
    document = client.get("/openapi.json").json()
    assert set(document["paths"]) == {"/translate", "/models", "/health"}
    request = document["paths"]["/translate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert request["properties"]["model"]["enum"] == ["tiny"] and request["required"] == ["text"]
    assert client.get("/nowhere").status_code == 404 and "error" in client.get("/nowhere").json()
    assert client.get("/translate").status_code == 405 and "error" in client.get("/translate").json()


def test_without_the_serve_extra_serve_says_what_to_install(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` now fails as if it were not installed
    result = CliRunner().invoke(app, ["serve", "-m", str(model_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["error: seq2seq serve needs the serve extra: pip install 'seq2seq[serve]'"]


def test_sigterm_finishes_the_requests_in_flight_then_exits_0(model_path: Path, lines: list[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "seq2seq", "serve", "-m", str(model_path), "--port", str(port),
                               "--max-wait-ms", "1500", "--batch-size", "64"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_until_up(port, server)
        url = f"http://127.0.0.1:{port}/translate"
        with socket.create_connection(("127.0.0.1", port)) as leaving:  # sent, then gone before the answer
            body = json.dumps({"text": lines[:2]}).encode()
            leaving.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        answer: dict = {}
        asking = threading.Thread(target=lambda: answer.update(_post(url, {"text": lines[2:6]})))
        asking.start()
        time.sleep(0.5)  # both requests wait in the batcher's round (1.5 s, as no batch is full)
        server.send_signal(signal.SIGTERM)
        asking.join(timeout=30)
        assert server.wait(timeout=30) == 0, server.stderr.read().decode()
    finally:
        server.kill()
    log = server.stderr.read().decode()
    assert "Traceback" not in log and "ERROR" not in log, log
    expected = Translator(*_loaded(model_path), device="cpu").translate(lines[2:6])
    assert [item["text"] for item in answer["translations"]] == [hyps[0].text for hyps in expected]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _wait_until_up(port: int, server: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read().decode()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the server did not answer on port {port} within {timeout_s} s")


# --max-output-pieces: the tiny model's length limit for a line of p source pieces is 2 x (p + 1) + 3 pieces, its
# end of sentence included (max_length_ratio 2, max_length_constant 3): 2 x (p + 1) + 2 output pieces.
def _most_output_pieces(translator: Translator, line: str, ratio: float = 2.0, constant: int = 3) -> int:
    pieces = len(translator.tokenizers.src.encode([line])[0])
    return int(ratio * (pieces + 1) + constant) - 1


def test_max_output_pieces_refuses_a_request_whose_search_could_write_more(model_path: Path, lines: list[str]) -> None:
    translator = Translator(*_loaded(model_path), device="cpu")
    line = max(lines, key=len)
    most = _most_output_pieces(translator, line)
    batcher = Batcher(translator, max_output_pieces=most, max_source_pieces=400)
    answered = batcher.submit(["", line], nbest=2).result(timeout=30)  # the model's settings reach the cap exactly
    assert [[(hyp.text, hyp.tokens) for hyp in hyps] for hyps in answered] == \
        [[(hyp.text, hyp.tokens) for hyp in hyps] for hyps in translator.translate(["", line], nbest=2)]
    assert max(len(hyp.tokens) for hyps in answered for hyp in hyps) <= most
    asks = {"max_length_constant": (4, most + 1), "max_length_ratio": (2.5, _most_output_pieces(translator, line, 2.5)),
            "min_length": (most + 1, most + 1)}
    for setting, (value, pieces) in asks.items():
        with pytest.raises(OverLimit, match=rf"^line 1's output may run to {pieces} pieces .* the limit is {most} "):
            batcher.submit(["", line], options={setting: value})
    batcher.close()


def test_max_output_pieces_counts_a_long_line_as_max_source_pieces_cuts_it(model_path: Path, lines: list[str]) -> None:
    translator = Translator(*_loaded(model_path), device="cpu")
    long_line = " ".join(lines)
    cut, tighter, whole = (Batcher(translator, max_source_pieces=source, max_output_pieces=output)
                           for source, output in ((2, 2 * 3 + 2), (2, 2 * 3 + 1), (0, 2 * 3 + 2)))
    assert cut.submit([long_line]).result(timeout=30)[0][0].text == \
        translator.translate([long_line], max_source_pieces=2)[0][0].text
    with pytest.raises(OverLimit, match="^line 0's output may run to 8 pieces"):
        tighter.submit([long_line])
    with pytest.raises(OverLimit, match=f"^line 0's output may run to {_most_output_pieces(translator, long_line)} "):
        whole.submit([long_line])
    for batcher in (cut, tighter, whole):
        batcher.close()


def test_a_request_over_max_output_pieces_gets_413(model_path: Path, lines: list[str]) -> None:
    served = _served(model_path, device="cpu", max_wait_s=0, max_queued_lines=30, max_source_pieces=400,
                     max_output_pieces=100)
    with TestClient(application({"tiny": served}, LIMITS)) as capped:
        assert capped.post("/translate", json={"text": lines[:2], "max_length_constant": 20}).status_code == 200
        answer = capped.post("/translate", json={"text": lines[:2], "max_length_constant": 101})
    assert answer.status_code == 413
    assert answer.json()["error"].startswith("line 0's output may run to ") and "(--max-output-pieces)" in answer.json()["error"]


class ElsewhereTranslator(Translator):
    """A translator that fails when it searches in the process that made it: its batcher's workers must."""

    parent = 0  # the pid of the process that made it

    def translate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert os.getpid() != self.parent, "searched in the server's own process"
        return super().translate(*args, **kwargs)


def test_workers_search_in_their_own_processes_as_the_library_does(model_path: Path, lines: list[str]) -> None:
    translator = ElsewhereTranslator(*_loaded(model_path, **ROUND_WAITS), device="cpu")
    translator.parent = os.getpid()
    batcher = Batcher(translator, workers=2, max_wait_s=0.05)
    asks = [dict(), dict(options={"beam_size": 1}), dict(nbest=2, alignment=True), dict(options={"sample": True})]
    futures = [(lines[start : start + 3], ask, batcher.submit(lines[start : start + 3], **ask))
               for start in range(0, 12, 3) for ask in asks]
    results = [(chunk, ask, future.result(timeout=60)) for chunk, ask, future in futures]
    batcher.close()
    reference = Translator(*_loaded(model_path), device="cpu")
    for chunk, ask, got in results:
        alone = reference.translate(chunk, nbest=ask.get("nbest", 1), attention=ask.get("alignment", False),
                                    **ask.get("options", {}))
        assert [[(hyp.text, round(hyp.score, 4), hyp.alignment) for hyp in hyps] for hyps in got] == \
            [[(hyp.text, round(hyp.score, 4), hyp.alignment) for hyp in hyps] for hyps in alone]


class GatedBatcher(Batcher):
    """A batcher whose searches record their size and then wait for the test to let one finish."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.rounds: list[int] = []
        self.gate = threading.Semaphore(0)
        super().__init__(*args, **kwargs)

    def _translate(self, lines: list[str], options: object) -> list[list[Translation]]:
        self.rounds.append(len(lines))
        self.gate.acquire()
        return [[] for _ in lines]


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the batcher's searchers did not get there"
        time.sleep(0.01)


def test_a_free_searcher_takes_its_share_of_the_lines_and_leaves_the_rest_to_the_next(
        model_path: Path, lines: list[str]) -> None:
    # Two searchers each busy with one line; six lines queue up meanwhile. The first to finish takes its even
    # share of the eight lines in the batcher (four, counting the line still being searched), not all six: so
    # closed-loop clients do not stay in the lopsided rounds they once fell into.
    batcher = GatedBatcher(Translator(*_loaded(model_path), device="cpu"), workers=2, max_wait_s=0)
    futures = [batcher.submit(lines[:1])]
    _until(lambda: batcher.rounds == [1])
    futures.append(batcher.submit(lines[1:2]))
    _until(lambda: batcher.rounds == [1, 1])
    futures += [batcher.submit([line]) for line in lines[2:8]]
    batcher.gate.release()
    _until(lambda: len(batcher.rounds) == 3)
    batcher.gate.release(len(futures))
    batcher.close()
    assert batcher.rounds[:3] == [1, 1, 4] and sum(batcher.rounds) == 8
    assert all(future.done() for future in futures)


def _children() -> set[int]:
    return {int(pid) for task in Path(f"/proc/{os.getpid()}/task").iterdir()
            for pid in (task / "children").read_text().split()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="worker processes are forked on Linux")
def test_a_worker_process_killed_is_replaced_and_its_lines_searched_again(model_path: Path, lines: list[str]) -> None:
    translator = Translator(*_loaded(model_path), device="cpu")
    before = _children()
    batcher = Batcher(translator, workers=2, max_wait_s=0)
    workers = _children() - before
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    answered = batcher.submit(lines[:3]).result(timeout=60)
    assert [hyps[0].text for hyps in answered] == [hyps[0].text for hyps in translator.translate(lines[:3])]
    assert len(_children() - before - workers) == 2
    batcher.close()
