"""`seq2seq serve` under load: many one-line requests at once against the same lines sent as one request.

    python bench/serve_load.py --model runs/de-en/best.pt --input test_2016_flickr.de --clients 64

Starts the server on a free loopback port, then measures, each --repeats times: the whole input as one
request (what one file costs), every line as its own request from --clients concurrent clients (what
batching across requests recovers of that), and the same one at a time (what it would cost without).
Prints lines/s for each, and checks that the concurrent answers are the single request's, line by line.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


def post(port: int, lines: list[str], **options: object) -> list[str]:
    """The texts of the server's translations of `lines`."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/translate", data=json.dumps({"text": lines, **options}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return [item["text"] for item in json.load(response)["translations"]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(port: int, server: subprocess.Popen) -> None:
    while server.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"the server ended with exit {server.returncode}")


def timed(run: Callable[[], list[str]]) -> tuple[float, list[str]]:
    start = time.perf_counter()
    texts = run()
    return time.perf_counter() - start, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True, help="source lines, one a line")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-wait-ms", default="10")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--batch-size", default="64")
    parser.add_argument("--threads", default="0", help="the server's --threads")
    args = parser.parse_args()
    with open(args.input, encoding="utf-8") as file:
        lines = file.read().splitlines()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "seq2seq", "serve", "-m", args.model, "--port", str(port),
                               "--max-wait-ms", args.max_wait_ms, "--batch-size", args.batch_size, "--threads", args.threads,
                               "--max-lines", str(max(len(lines), 1))],
                              stderr=subprocess.DEVNULL)
    try:
        wait_until_up(port, server)
        def one(line: str) -> str:
            return post(port, [line], beam_size=args.beam_size)[0]

        with ThreadPoolExecutor(args.clients) as clients:
            runs = {
                "one request": lambda: post(port, lines, beam_size=args.beam_size),
                f"{args.clients} concurrent clients": lambda: list(clients.map(one, lines)),
                "one line at a time": lambda: [one(line) for line in lines],
            }
            results = {name: [timed(run) for _ in range(args.repeats)] for name, run in runs.items()}
    finally:
        server.terminate()
        server.wait()
    reference = results["one request"][0][1]
    for name, rounds in results.items():
        seconds = statistics.median(elapsed for elapsed, _ in rounds)
        same = all(texts == reference for _, texts in rounds)
        print(f"{name:>28}: {len(lines) / seconds:8.1f} lines/s (median of {len(rounds)}), "
              f"{'same outputs' if same else 'OUTPUTS DIFFER'} as one request")


if __name__ == "__main__":
    main()
