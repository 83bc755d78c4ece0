"""`seq2seq serve` under load: one-line requests from concurrent keep-alive clients, against `seq2seq translate`.

    python bench/serve_load.py --model runs/de-en/best.pt --input test_2016_flickr.de.gz
    python bench/serve_load.py --model runs/de-en/best.pt --input test_2016_flickr.de.gz --quantize int8
    python bench/serve_load.py --model runs/de-en/best.pt --input train.de.gz --requests 10000 \
        --concurrency 32 --no-baseline --rss-every 1000

First the baseline: `seq2seq translate` on the input's lines (its first --requests) in one command, with
its defaults (worker processes included), timed two ways: the translate time it reports itself, the
ratios' denominator, and the whole command (interpreter start and model loading too). Then a server on
a free loopback port and, for each --concurrency C and each of --repeats rounds, --requests one-line
requests cycling through those lines, sent by C client threads, each with its own keep-alive connection
(http.client) and one request in flight: sentences/s, p50 and p99 latency (request sent to answer read),
errors (any answer but 200) and mismatches (a translation other than the command's for its line). Every
request is bounded, so the run ends by itself.

The clients share the machine with the server: their CPU time is printed (a share of one core), and so
is the CPU time that neither the server nor the clients used (others', and stolen by the hypervisor; a
share of all cores): a round with much of it ran on a busy machine. With --rss-every N, the server's
resident memory (VmRSS of it and of each worker process) is printed every N requests instead.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import re
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

TIMEOUT_S = 120  # one request; a server that stops answering fails the run instead of hanging it
CORES = os.cpu_count() or 1
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    """The machine's CPU over a stretch of time: what else ran beside the measured processes."""

    seconds: float = 0.0
    others: float = 0.0   # busy CPU time of other processes, a share of all cores
    stolen: float = 0.0   # time the hypervisor gave to other machines, a share of all cores


@dataclass
class Round:
    """What the clients saw of one round of requests."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    mismatches: int = 0
    client_cpu: float = 0.0  # a share of one core
    usage: Usage = field(default_factory=Usage)


def read_lines(path: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as file:
        return file.read().splitlines()


def machine_ticks() -> tuple[int, int]:
    """The whole machine's busy and stolen CPU time so far, in clock ticks (/proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return user + nice + system + irq + softirq, steal


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a server's worker processes), from /proc."""
    children = [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]
    return [pid, *(descendant for child in children for descendant in process_tree(child))]


def process_ticks(pid: int) -> int:
    """CPU time (user + system) of `pid` and its descendants so far, in clock ticks."""
    total = 0
    for process in process_tree(pid):
        fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


@contextmanager
def watching(ours: Callable[[], float]) -> Iterator[Usage]:
    """Measure the CPU that others used while the block ran; `ours()`: the measured processes' CPU seconds."""
    usage = Usage()
    (busy, stolen), mine, start = machine_ticks(), ours(), time.perf_counter()
    yield usage
    (busy_after, stolen_after), mine_after = machine_ticks(), ours()
    usage.seconds = time.perf_counter() - start
    machine = usage.seconds * CORES
    usage.others = max(0.0, (busy_after - busy) * TICK_S - (mine_after - mine)) / machine
    usage.stolen = (stolen_after - stolen) * TICK_S / machine


def own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def baseline(model: str, source: Path, beam_size: int, quantize: str) -> tuple[list[str], float, float, Usage]:
    """`seq2seq translate` on `source`: its output lines, the whole command's seconds, the translate seconds it
    reports on stderr (after loading the model), and the machine's use meanwhile."""
    def children_cpu_s() -> float:
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        return used.ru_utime + used.ru_stime + own_cpu_s()

    output = source.with_suffix(".out")
    with watching(children_cpu_s) as usage:
        done = subprocess.run([sys.executable, "-m", "seq2seq", "translate", "-m", model, "-i", str(source),
                               "-o", str(output), "--beam-size", str(beam_size), "--quantize", quantize],
                              capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"seq2seq translate failed:\n{done.stderr}")
    reported = re.search(r"translated [\d,]+ lines .* in ([\d.]+) s", done.stderr)
    if reported is None:
        sys.exit(f"no timing line in seq2seq translate's stderr:\n{done.stderr}")
    return output.read_text(encoding="utf-8").splitlines(), usage.seconds, float(reported.group(1)), usage


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(port: int, server: subprocess.Popen, log: Path) -> None:
    while server.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"the server ended with exit {server.returncode}:\n{log.read_text()}")


def client(port: int, jobs: Callable[[], int | None], lines: list[str], expected: list[str] | None,
           options: dict, seen: Round, lock: threading.Lock) -> None:
    """One client: a keep-alive connection, one request at a time, until `jobs` has none left."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    while (number := jobs()) is not None:
        body = json.dumps({"text": [lines[number]], **options})
        start = time.perf_counter()
        try:
            connection.request("POST", "/translate", body, {"Content-Type": "application/json"})
            answer = connection.getresponse()
            payload = answer.read()
            latency = time.perf_counter() - start
            problem = None if answer.status == 200 else f"{answer.status}: {payload[:200]!r}"
        except (OSError, http.client.HTTPException) as error:
            latency, problem = time.perf_counter() - start, f"{type(error).__name__}: {error}"
            connection.close()  # a fresh connection for the next request
        with lock:
            seen.latencies.append(latency)
            if problem is not None:
                seen.errors.append(problem)
            elif expected is not None and json.loads(payload)["translations"][0]["text"] != expected[number]:
                seen.mismatches += 1
    connection.close()


def load(server: int, port: int, lines: list[str], expected: list[str] | None, *, requests: int, concurrency: int,
         options: dict, every: int = 0, on_every: Callable[[int], None] = lambda sent: None) -> Round:
    """`requests` one-line requests, the lines in turn, from `concurrency` clients at once to the server of pid
    `server`; every `every` requests, `on_every(requests started)` runs in the client that starts the next."""
    numbers = iter(range(requests))
    taking = threading.Lock()

    def next_job() -> int | None:
        with taking:
            number = next(numbers, None)
        if number is not None and every and number and number % every == 0:
            on_every(number)
        return None if number is None else number % len(lines)

    seen, lock = Round(), threading.Lock()
    clients = [threading.Thread(target=client, args=(port, next_job, lines, expected, options, seen, lock))
               for _ in range(concurrency)]
    client_start = own_cpu_s()
    with watching(lambda: own_cpu_s() + process_ticks(server) * TICK_S) as seen.usage:
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
    seen.client_cpu = (own_cpu_s() - client_start) / seen.usage.seconds
    return seen


def resident_mib(pid: int) -> list[float]:
    """VmRSS of process `pid` and of each of its descendants (a server's worker processes), MiB."""
    def rss(process: int) -> float:
        status = Path(f"/proc/{process}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    return [rss(process) for process in process_tree(pid)]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def report(concurrency: int, rounds: list[Round], requests: int, cli_rate: float | None) -> None:
    """One table row: medians over the rounds, each round's sentences/s in brackets."""
    rates = [requests / seen.usage.seconds for seen in rounds]
    rate = statistics.median(rates)

    def median(value: Callable[[Round], float]) -> float:
        return statistics.median(value(seen) for seen in rounds)

    errors, mismatches = sum(len(seen.errors) for seen in rounds), sum(seen.mismatches for seen in rounds)
    ratio = f"{rate / cli_rate:.2f}x" if cli_rate else "-"
    print(f"| {concurrency} | {rate:.1f} ({', '.join(f'{r:.1f}' for r in rates)}) | {ratio} "
          f"| {median(lambda seen: 1000 * percentile(seen.latencies, 0.50)):.0f} "
          f"| {median(lambda seen: 1000 * percentile(seen.latencies, 0.99)):.0f} | {errors} | {mismatches} "
          f"| {median(lambda seen: 100 * seen.client_cpu):.0f}% "
          f"| {median(lambda seen: 100 * seen.usage.others):.0f}% + {median(lambda seen: 100 * seen.usage.stolen):.0f}% |",
          flush=True)
    for problem in sorted({problem for seen in rounds for problem in seen.errors})[:5]:
        print(f"    error: {problem}")


def measure_throughput(server: int, port: int, lines: list[str], expected: list[str] | None,
                       args: argparse.Namespace, cli_rate: float | None) -> None:
    """The table: a row per --concurrency, over --repeats rounds of --requests requests."""
    print("| concurrent clients | sentences/s (each round) | of the CLI's | p50 ms | p99 ms | errors | mismatches "
          "| clients' CPU | others' CPU + stolen |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    for concurrency in args.concurrency:
        rounds = [load(server, port, lines, expected, requests=args.requests, concurrency=concurrency,
                       options={"beam_size": args.beam_size}) for _ in range(args.repeats)]
        report(concurrency, rounds, args.requests, cli_rate)


def measure_memory(server: int, port: int, lines: list[str], expected: list[str] | None,
                   args: argparse.Namespace) -> None:
    """The server's resident memory every --rss-every requests, over --requests requests."""
    def sample(sent: int) -> None:
        print(f"{sent:>7,} requests: VmRSS {' + '.join(f'{mib:.0f}' for mib in resident_mib(server))} MiB", flush=True)

    for concurrency in args.concurrency:
        sample(0)
        seen = load(server, port, lines, expected, requests=args.requests, concurrency=concurrency,
                    options={"beam_size": args.beam_size}, every=args.rss_every, on_every=sample)
        sample(args.requests)
        print(f"{concurrency} clients: {args.requests / seen.usage.seconds:.1f} sentences/s, {len(seen.errors)} errors, "
              f"{seen.mismatches} mismatches", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True, help="source lines, one a line (.gz read as gzip)")
    parser.add_argument("--requests", type=int, default=2_000, help="one-line requests at each concurrency, each round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=1, help="rounds at each concurrency (medians reported)")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="time `seq2seq translate` on the lines sent, and check every answer against its output")
    parser.add_argument("--rss-every", type=int, default=0, metavar="N", help="print the server's VmRSS every N requests")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none", help="for the command and the server alike")
    parser.add_argument("--serve-args", default="", help="more options for `seq2seq serve`, e.g. '--threads 1'")
    args = parser.parse_args()
    lines = read_lines(args.input)[: args.requests]
    expected, cli_rate = None, None
    with tempfile.TemporaryDirectory() as folder:
        if args.baseline:
            source = Path(folder, "source.de")
            source.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
            expected, whole, translating, usage = baseline(args.model, source, args.beam_size, args.quantize)
            cli_rate = len(lines) / translating
            print(f"seq2seq translate, {len(lines):,} lines, beam {args.beam_size}: {cli_rate:.1f} sentences/s translating "
                  f"({translating:.1f} s: the ratios' denominator), {len(lines) / whole:.1f} with start-up ({whole:.1f} s); "
                  f"others' CPU + stolen {100 * usage.others:.0f}% + {100 * usage.stolen:.0f}%", flush=True)
        port, log = free_port(), Path(folder, "serve.log")
        with log.open("w") as log_file:
            server = subprocess.Popen([sys.executable, "-m", "seq2seq", "serve", "-m", args.model, "--port", str(port),
                                       "--quantize", args.quantize, *shlex.split(args.serve_args)], stderr=log_file)
        try:
            wait_until_up(port, server, log)
            load(server.pid, port, lines, None, requests=64, concurrency=max(args.concurrency),
                 options={"beam_size": args.beam_size})  # warm-up
            if args.rss_every:
                measure_memory(server.pid, port, lines, expected, args)
            else:
                measure_throughput(server.pid, port, lines, expected, args, cli_rate)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
