"""Translation speed and BLEU on Multi30k test_2016_flickr: ours beside OpenNMT-py, same machine, same run.

    python bench/translate_speed.py --model runs/de-en/best.pt \
        --peer-checkpoint /tmp/s2s-peers/runs/onmt-900s/model_step_975.pt

For each system, beam 1 and 5, batch 1 and 64 sentences: decoding-only sentences/s and output
pieces/s (median of --repeats runs; model loading excluded, as OpenNMT-py's -report_time does),
BLEU (sacreBLEU, cased, 13a, detokenized) and, at batch 64, the wall time of the whole command
(interpreter start, model load, decoding). The peer is set up by ../shared/bench/peers/setup.sh
and prep.sh; leave --peer-checkpoint out to measure ours alone.
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

from seq2seq import checkpoint, devices
from seq2seq.allocator import reuse_freed_memory
from seq2seq.textio import read_lines
from seq2seq.translation import translate

PEERS = Path(os.environ.get("PEERS", "/tmp/s2s-peers"))


VARIANTS = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"}, "int8": {"quantize": "int8"}}


def ours(model: Path, sources: list[str], references: list[str], settings: list[tuple[int, int]], repeats: int,
         variant: str, device: str) -> list[dict]:
    """Our decoding time includes quantizing the model (about 0.1 s) for the int8 variant."""
    reuse_freed_memory()  # as `seq2seq translate` does
    loaded = checkpoint.load(model)
    loaded.model.to(devices.resolve(device))
    rows = []
    for beam, batch in settings:
        search = replace(loaded.config.search, beam_size=beam, batch_size=batch, **VARIANTS[variant])
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            outputs = [best[0] for best in translate(loaded.model, loaded.tokenizers, sources, search)]
            times.append(time.perf_counter() - start)
        pieces = sum(len(out.tokens) for out in outputs)
        bleu = sacrebleu.corpus_bleu([out.text for out in outputs], [references]).score
        options = [f"--{name}={value}" for name, value in VARIANTS[variant].items()] + [f"--device={device}"]
        whole = _whole_command([sys.executable, "-m", "seq2seq", "translate", "-m", str(model), "-q", *options,
                                "--beam-size", str(beam), "--batch-size", str(batch)], sources) if batch == 64 else None
        system = f"seq2seq {variant}" + (f" ({device})" if device != "cpu" else "")
        rows.append(_row(system, beam, batch, times, len(sources), pieces, bleu, whole))
    return rows


def peer(peer_checkpoint: Path, sources_sp: Path, references: list[str], settings: list[tuple[int, int]],
         repeats: int) -> list[dict]:
    import sentencepiece

    spm = sentencepiece.SentencePieceProcessor(model_file=str(PEERS / "data" / "spm8k.model"))
    rows = []
    for beam, batch in settings:
        times, whole = [], []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as scratch:
                hyp = Path(scratch) / "hyp.sp"
                command = [str(PEERS / "onmt" / "bin" / "onmt_translate"), "-model", str(peer_checkpoint),
                           "-src", str(sources_sp), "-output", str(hyp), "-beam_size", str(beam),
                           "-batch_size", str(batch), "-batch_type", "sents", "-gpu", "-1", "-report_time"]
                start = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True,
                                      env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
                whole.append(time.perf_counter() - start)
                if done.returncode:
                    raise SystemExit(f"onmt_translate failed:\n{done.stderr[-2000:]}")
                average_ms = float(re.search(r"Average translation time \(ms\): ([\d.]+)", done.stderr).group(1))
                pieces_out = [line.split() for line in hyp.read_text().splitlines()]
            times.append(average_ms * len(pieces_out) / 1000)
        texts = [spm.decode(pieces) for pieces in pieces_out]
        bleu = sacrebleu.corpus_bleu(texts, [references]).score
        rows.append(_row("OpenNMT-py 3.5.1", beam, batch, times, len(texts), sum(map(len, pieces_out)), bleu,
                         statistics.median(whole) if batch == 64 else None))
    return rows


def _whole_command(command: list[str], sources: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, input="".join(line + "\n" for line in sources), capture_output=True, text=True, check=True)
    return time.perf_counter() - start


def _row(system: str, beam: int, batch: int, times: list[float], sentences: int, pieces: int, bleu: float,
         whole: float | None) -> dict:
    seconds = statistics.median(times)
    return {"system": system, "beam": beam, "batch": batch, "sent_s": sentences / seconds, "tok_s": pieces / seconds,
            "bleu": bleu, "whole_s": whole, "runs": [round(t, 2) for t in times]}


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
    args = parser.parse_args()
    sources = read_lines(args.data / "test_2016_flickr.de.gz")
    references = read_lines(args.data / "test_2016_flickr.en.gz")
    settings = [(beam, batch) for beam in args.beams for batch in args.batch_sizes]
    rows = [row for variant in args.variants
            for row in ours(args.model, sources, references, settings, args.repeats, variant, args.device)]
    if args.peer_checkpoint:
        rows += peer(args.peer_checkpoint, PEERS / "data" / "test_2016_flickr.sp.de", references, settings, args.repeats)
    print(f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}, {len(sources)} sentences, median of {args.repeats}")
    print("| system | beam | batch | sent/s (decode) | out pieces/s | BLEU | whole command, s | runs, s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        whole = f"{row['whole_s']:.1f}" if row["whole_s"] else ""
        print(f"| {row['system']} | {row['beam']} | {row['batch']} | {row['sent_s']:.1f} | {row['tok_s']:,.0f} | "
              f"{row['bleu']:.2f} | {whole} | {row['runs']} |")


if __name__ == "__main__":
    main()
