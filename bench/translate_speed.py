"""Translation speed and BLEU on Multi30k test_2016_flickr: ours beside OpenNMT-py, same machine, same run.

    python bench/translate_speed.py --model runs/de-en/best.pt \
        --peer-checkpoint /tmp/s2s-peers/runs/onmt-900s/model_step_975.pt

For each system, beam 1 and 5, batch 1 and 64 sentences: decoding-only sentences/s and output
pieces/s (median of --repeats rounds; model loading excluded, as OpenNMT-py's -report_time does),
BLEU (sacreBLEU, cased, 13a, detokenized) and, at batch 64, the wall time of the whole command
(interpreter start, model load, decoding). Each round runs every system once per setting, ours
and the peer one after the other, and the ratios are the medians of each round's own ratio: this
machine's slow spells last minutes, longer than one system's runs. Ours runs with --workers
(default 0: one worker process per core, as `seq2seq translate` does; 1: one process on every core). The peer is set up by
../shared/bench/peers/setup.sh and prep.sh; leave --peer-checkpoint out to measure ours alone.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import sacrebleu

import seq2seq
from seq2seq import devices
from seq2seq.workers import worker_count

PEERS = Path(os.environ.get("PEERS", "/tmp/s2s-peers"))


VARIANTS = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"}, "int8": {"quantize": "int8"}}
Setting = tuple[int, int]  # (beam, batch)


class Ours:
    """One variant of our model, loaded once; each call decodes the test set with one setting."""

    def __init__(self, model: Path, variant: str, device: str, workers: int) -> None:
        self.model_path, self.variant, self.device, self.workers = model, variant, device, workers
        processes = worker_count(workers, devices.resolve(device))
        self.name = f"seq2seq {variant}" + (f" ({device})" if device != "cpu" else "") + \
            (f", {processes} workers" if processes > 1 else "")
        self.loaded = seq2seq.load_checkpoint(model)

    def decode(self, sources: list[str], beam: int, batch: int) -> tuple[float, list[str], int]:
        """Seconds, output texts and output pieces; the seconds include making the translator (quantizing the model,
        about 0.05 s, for int8) and starting the workers."""
        search = replace(self.loaded.config.search, beam_size=beam, batch_size=batch, **VARIANTS[self.variant])
        start = time.perf_counter()
        translator = seq2seq.Translator(self.loaded.model, self.loaded.tokenizers, search, device=self.device)
        outputs = [best[0] for best in translator.stream(sources, workers=self.workers)]
        return time.perf_counter() - start, [out.text for out in outputs], sum(len(out.tokens) for out in outputs)

    def whole_command(self, sources: list[str], beam: int, batch: int) -> float:
        options = [f"--{name}={value}" for name, value in VARIANTS[self.variant].items()] + \
            [f"--device={self.device}", f"--workers={self.workers}"]
        command = [sys.executable, "-m", "seq2seq", "translate", "-m", str(self.model_path), "-q", *options,
                   "--beam-size", str(beam), "--batch-size", str(batch)]
        start = time.perf_counter()
        subprocess.run(command, input="".join(line + "\n" for line in sources), capture_output=True, text=True, check=True)
        return time.perf_counter() - start


class Peer:
    """OpenNMT-py's onmt_translate on the same test set, encoded with the shared SentencePiece model; the
    seconds are its own decoding time (-report_time), the whole command is timed around it."""

    name = "OpenNMT-py 3.5.1"

    def __init__(self, peer_checkpoint: Path, sources_sp: Path) -> None:
        import sentencepiece

        self.checkpoint, self.sources_sp = peer_checkpoint, sources_sp
        self.spm = sentencepiece.SentencePieceProcessor(model_file=str(PEERS / "data" / "spm8k.model"))
        self.whole: dict[Setting, list[float]] = {}

    def decode(self, sources: list[str], beam: int, batch: int) -> tuple[float, list[str], int]:
        with tempfile.TemporaryDirectory() as scratch:
            hyp = Path(scratch) / "hyp.sp"
            command = [str(PEERS / "onmt" / "bin" / "onmt_translate"), "-model", str(self.checkpoint),
                       "-src", str(self.sources_sp), "-output", str(hyp), "-beam_size", str(beam),
                       "-batch_size", str(batch), "-batch_type", "sents", "-gpu", "-1", "-report_time"]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True,
                                  env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
            self.whole.setdefault((beam, batch), []).append(time.perf_counter() - start)
            if done.returncode:
                raise SystemExit(f"onmt_translate failed:\n{done.stderr[-2000:]}")
            average_ms = float(re.search(r"Average translation time \(ms\): ([\d.]+)", done.stderr).group(1))
            pieces_out = [line.split() for line in hyp.read_text().splitlines()]
        return average_ms * len(pieces_out) / 1000, [self.spm.decode(pieces) for pieces in pieces_out], \
            sum(map(len, pieces_out))


def rounds(systems: list, sources: list[str], settings: list[Setting], repeats: int) -> dict:
    """Seconds per (system, setting), one list entry per round. Each round runs every system once per setting,
    one after the other, so a slow spell of this shared machine falls on ours and the peer alike."""
    found: dict = {}
    for _ in range(repeats):
        for setting in settings:
            for system in systems:
                seconds, texts, pieces = system.decode(sources, *setting)
                entry = found.setdefault((system.name, setting), {"seconds": [], "texts": texts, "pieces": pieces})
                entry["seconds"].append(seconds)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="our checkpoint (Multi30k de->en)")
    parser.add_argument("--peer-checkpoint", type=Path, help="an OpenNMT-py checkpoint of the same model size")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/multi30k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="fp32, bf16 (autocast) and int8 (--quantize int8)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where ours translates (int8: cpu only)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0],
                        help="our worker processes, each count a system of its own (0 = one per core, the default of "
                             "`seq2seq translate`; 1 = one process using every core)")
    args = parser.parse_args()
    sources = seq2seq.read_lines(args.data / "test_2016_flickr.de.gz")
    references = seq2seq.read_lines(args.data / "test_2016_flickr.en.gz")
    settings = [(beam, batch) for beam in args.beams for batch in args.batch_sizes]
    seq2seq.reuse_freed_memory()  # as `seq2seq translate` does
    ours = [Ours(args.model, variant, args.device, workers) for variant in args.variants for workers in args.workers]
    peer = Peer(args.peer_checkpoint, PEERS / "data" / "test_2016_flickr.sp.de") if args.peer_checkpoint else None
    found = rounds([*ours, *([peer] if peer else [])], sources, settings, args.repeats)

    print(f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}, {len(sources)} sentences, median of "
          f"{args.repeats} rounds (each round runs every system once per setting)")
    print("| system | beam | batch | sent/s (decode) | out pieces/s | BLEU | whole command, s | runs, s |")
    print("|---|---|---|---|---|---|---|---|")
    for system in [*ours, *([peer] if peer else [])]:
        for beam, batch in settings:
            entry = found[(system.name, (beam, batch))]
            seconds = statistics.median(entry["seconds"])
            bleu = sacrebleu.corpus_bleu(entry["texts"], [references]).score
            whole = (system.whole_command(sources, beam, batch) if isinstance(system, Ours)
                     else statistics.median(system.whole[(beam, batch)])) if batch == 64 else None
            print(f"| {system.name} | {beam} | {batch} | {len(sources) / seconds:.1f} | {entry['pieces'] / seconds:,.0f} | "
                  f"{bleu:.2f} | {f'{whole:.1f}' if whole else ''} | {[round(t, 2) for t in entry['seconds']]} |")
    if peer:
        print("\nOurs / the peer, sentences/s: the median of the rounds' ratios (lowest-highest)")
        print("| system | beam | batch | ratio |")
        print("|---|---|---|---|")
        for system in ours:
            for setting in settings:
                ratios = [theirs / mine for mine, theirs in zip(found[(system.name, setting)]["seconds"],
                                                               found[(peer.name, setting)]["seconds"])]
                print(f"| {system.name} | {setting[0]} | {setting[1]} | {statistics.median(ratios):.2f}x "
                      f"({min(ratios):.2f}-{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
