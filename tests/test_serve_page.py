"""The page `seq2seq serve` answers at /, and the "attention" field it draws: the API's attention is the library's,
and in a real headless browser (Debian's chromium and chromium-driver, driven by Selenium) a typed sentence gets
the translation `Translator.translate` gives it, its n-best list and the chosen hypothesis's heat map."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from starlette.testclient import TestClient  # noqa: E402

from cli.serve import _served  # noqa: E402
from cli.serving import Served, application  # noqa: E402
from seq2seq.batching import Batcher  # noqa: E402
from seq2seq.config import SearchConfig  # noqa: E402
from seq2seq.tokenizer import Tokenizers  # noqa: E402
from seq2seq.translation import Translation  # noqa: E402
from seq2seq.translator import Translator  # noqa: E402
from tests.conftest import save_untrained_model  # noqa: E402
from tests.test_serve import LIMITS, ROUND_WAITS, CountingTranslator, _loaded, _wait_until_up  # noqa: E402


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory, tokenizers: Tokenizers) -> Path:
    """An untrained tiny model searching with a beam of 3: its hypotheses differ, so choosing one shows."""
    return save_untrained_model(tmp_path_factory.mktemp("model") / "tiny.pt", tokenizers,
                                SearchConfig(beam_size=3, batch_size=4, max_length_constant=3))


@pytest.fixture(scope="module")
def translator(model_path: Path) -> Translator:
    return Translator(*_loaded(model_path), device="cpu")


@pytest.fixture(scope="module")
def lines(corpus: tuple[list[str], list[str]]) -> list[str]:
    return corpus[0][:4]


@pytest.fixture
def client(model_path: Path) -> Iterator[TestClient]:
    served = _served(model_path, device="cpu", max_wait_s=0.0, max_queued_lines=30, max_source_pieces=400)
    with TestClient(application({"tiny": served}, LIMITS)) as test_client:
        yield test_client


def _flat(rows: list[list[float]]) -> list[float]:
    """pytest.approx compares flat lists of numbers: the rows' shape is checked on its own."""
    return [value for row in rows for value in row]


def _pieces_of(translator: Translator, line: str, hyp: Translation) -> tuple[list[str], list[str]]:
    """The (source, target) labels of a hypothesis's attention, EOS last on both sides: as `--attention-plot` draws them."""
    tokenizers = translator.tokenizers
    (source,) = tokenizers.src.encode([line])
    return [*tokenizers.src.pieces(source), "</s>"], [*tokenizers.tgt.pieces(hyp.tokens), "</s>"]


def test_attention_is_a_row_per_output_piece_and_a_column_per_source_piece(
        client: TestClient, translator: Translator, lines: list[str]) -> None:
    line = lines[0]
    answer = client.post("/translate", json={"text": [line, ""], "nbest": 2, "attention": True})
    assert answer.status_code == 200, answer.text
    item, empty = answer.json()["translations"]
    expected = translator.translate([line], nbest=2, attention=True)[0]
    for got, hyp in zip(item["nbest"], expected, strict=True):
        attention = got["attention"]
        source, target = _pieces_of(translator, line, hyp)
        assert (got["text"], attention["source"], attention["target"]) == (hyp.text, source, target)
        # rows: the output's pieces, then its EOS; columns: the source's pieces, then the EOS the model read
        assert [len(row) for row in attention["weights"]] == [len(source)] * len(target)
        assert all(abs(sum(row) - 1) < 1e-3 for row in attention["weights"])
        assert _flat(attention["weights"]) == pytest.approx(_flat(hyp.attention.weights.tolist()), abs=1e-3)
    assert item["attention"] == item["nbest"][0]["attention"] and "alignment" not in item
    assert empty == {"text": "", "score": 0.0, "attention": None, "nbest": [{"text": "", "score": 0.0, "attention": None}]}


def test_attention_requests_are_searched_with_alignment_requests(model_path: Path, lines: list[str]) -> None:
    counting = CountingTranslator(*_loaded(model_path, **ROUND_WAITS), device="cpu")
    answers: dict[str, dict] = {}
    with TestClient(application({"tiny": Served(Batcher(counting, max_wait_s=0.5), {})}, LIMITS)) as test_client:
        def ask(field: str) -> None:
            answers[field] = test_client.post("/translate", json={"text": lines[:2], field: True}).json()

        callers = [threading.Thread(target=ask, args=(field,)) for field in ("alignment", "attention")]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
    assert counting.calls == 1  # one round, one group: both need the search to keep its attention
    assert [set(item) for item in answers["alignment"]["translations"]] == [{"text", "score", "alignment"}] * 2
    assert [set(item) for item in answers["attention"]["translations"]] == [{"text", "score", "attention"}] * 2


def test_attention_is_checked_and_described(client: TestClient) -> None:
    answer = client.post("/translate", json={"text": ["a"], "attention": "yes"})
    assert answer.status_code == 422 and answer.json()["error"] == "'attention' must be true or false, got 'yes'"
    translate = client.get("/openapi.json").json()["paths"]["/translate"]["post"]
    request = translate["requestBody"]["content"]["application/json"]["schema"]
    assert request["properties"]["attention"] == {"type": "boolean", "default": False}
    hypothesis = translate["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["translations"]["items"]
    assert set(hypothesis["properties"]["attention"]["properties"]) == {"source", "target", "weights"}


def test_the_page_is_one_file_that_fetches_nothing_from_elsewhere(client: TestClient) -> None:
    answer = client.get("/")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    page = answer.text
    assert "://" not in page  # no address of another server: its style and script are inline
    assert all(f'id="{name}"' in page for name in ("source", "beam", "nbest", "translate", "output", "heatmap", "error"))


# The browser test: Debian's chromium and chromium-driver (what .ci/run installs), driven by Selenium.
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (the dev extra)")
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("the browser test needs Debian's chromium and chromium-driver (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(argument)  # --no-sandbox: CI runs as root, where Chromium's sandbox will not start
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[str]:
    """`seq2seq serve` on a free port, as a user starts it; its address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "seq2seq", "serve", "-m", str(model_path), "--port", str(port),
                                "--max-wait-ms", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_until_up(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


# What the page shows, read in one call: each hypothesis's text, score and whether it is chosen; the heat map's
# column labels, and per row its label and each cell's weight and drawn shade (the alpha of its colour).
READ_PAGE = """
const texts = (selector, root = document) => [...root.querySelectorAll(selector)].map((node) => node.textContent);
return {
  hypotheses: [...document.querySelectorAll("#output .hypothesis")].map((item) => ({
    text: item.querySelector(".text").textContent, score: item.querySelector(".score").textContent,
    chosen: item.classList.contains("chosen")})),
  columns: texts("#heatmap thead th.source-piece"),
  rows: [...document.querySelectorAll("#heatmap tbody tr")].map((row) => ({
    label: row.querySelector("th").textContent,
    weights: [...row.querySelectorAll("td")].map((cell) => Number(cell.dataset.weight)),
    shades: [...row.querySelectorAll("td")].map((cell) => {
      const rgba = getComputedStyle(cell).backgroundColor.match(/[\\d.]+/g).map(Number);
      return rgba.length === 4 ? rgba[3] : 1; })})),
  error: document.getElementById("error").textContent,
};
"""


def test_the_page_translates_as_the_library_does_and_draws_the_chosen_attention(
        browser: Any, server: str, translator: Translator, lines: list[str]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    line = lines[1]
    browser.get(server + "/")
    wait = WebDriverWait(browser, 15)
    wait.until(lambda driver: driver.find_element(By.ID, "beam").get_attribute("value") == "3")  # the model's beam
    browser.find_element(By.ID, "source").send_keys(line)
    _type(browser.find_element(By.ID, "beam"), "2")
    _type(browser.find_element(By.ID, "nbest"), "2")
    browser.find_element(By.ID, "translate").click()
    wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#heatmap tbody td"))
    expected = translator.translate([line], nbest=2, beam_size=2, attention=True)[0]
    shown = browser.execute_script(READ_PAGE)
    assert shown["hypotheses"] == [{"text": hyp.text, "score": f"{hyp.score:.4f}", "chosen": number == 0}
                                   for number, hyp in enumerate(expected)]
    _assert_heat_map(shown, translator, line, expected[0])

    browser.find_elements(By.CSS_SELECTOR, "#output .hypothesis")[1].click()  # the second best: its attention
    shown = browser.execute_script(READ_PAGE)
    assert [hyp["chosen"] for hyp in shown["hypotheses"]] == [False, True]
    _assert_heat_map(shown, translator, line, expected[1])

    _type(browser.find_element(By.ID, "nbest"), "3")  # over the beam of 2: the API's one line, in the page
    browser.find_element(By.ID, "translate").click()
    wait.until(lambda driver: driver.find_element(By.ID, "error").text)
    assert browser.execute_script(READ_PAGE)["error"] == "nbest must be from 1 to the beam size: got nbest 3 with beam_size 2"


def _type(field: Any, text: str) -> None:
    field.clear()
    field.send_keys(text)


def _assert_heat_map(shown: dict, translator: Translator, line: str, hyp: Translation) -> None:
    """The heat map is `hyp`'s attention: its pieces as labels, a cell per weight, each shaded by it."""
    source, target = _pieces_of(translator, line, hyp)
    assert shown["columns"] == source and [row["label"] for row in shown["rows"]] == target
    weights = [row["weights"] for row in shown["rows"]]
    assert [len(row) for row in weights] == [len(source)] * len(target)
    assert _flat(weights) == pytest.approx(_flat(hyp.attention.weights.tolist()), abs=1e-3)
    assert _flat([row["shades"] for row in shown["rows"]]) == pytest.approx(_flat(weights), abs=0.01)
