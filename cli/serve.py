"""`seq2seq serve`: trained models behind an HTTP JSON API (`cli.serving`), run by uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.console import help_epilog, say, user_errors
from cli.translate import MAX_SOURCE_PIECES

# A line of MAX_SOURCE_PIECES pieces, searched with the default length limit (2 x its pieces and its end, + 10),
# may write 811 pieces: the cap is above that, and bounds a request asking for a larger ratio or constant.
MAX_OUTPUT_PIECES = 1_000

if TYPE_CHECKING:
    from cli.serving import Served

EPILOG = help_epilog("""\
\b
Examples:
  seq2seq serve -m runs/de-en/best.pt
  seq2seq serve -m runs/de-en/best.pt -m runs/en-de/best.pt --name de-en --name en-de --port 9000
  curl -s localhost:8080/translate -d '{"text": ["Ein Hund rennt."], "beam_size": 4, "nbest": 2}'

Requests arriving within --max-wait-ms of each other are searched together, those with the same
settings in the same batches: a request's translations are the ones `seq2seq translate` gives its
lines. Each worker process takes the next round as soon as it is free, so one round is searched while
the next gathers, and no more than its even share of the lines waiting and being searched. A browser
at http://HOST:PORT/ gets a page to try the models, with the attention drawn. SIGTERM or Ctrl-C stops
taking connections, answers the requests already taken, and exits 0.""")

Opt = typer.Option


def serve(
    model: Annotated[list[Path], Opt("--model", "-m", help="Checkpoint (.pt) written by `seq2seq train`; repeat it to serve several models, chosen by a request's \"model\".", show_default=False)],
    name: Annotated[list[str] | None, Opt("--name", help="The models' names in requests, one per --model in order. [default: each file's name without .pt]", show_default=False)] = None,
    host: Annotated[str, Opt(help="Address to listen on; the default answers this machine only, 0.0.0.0 every network.")] = "127.0.0.1",
    port: Annotated[int, Opt(min=0, max=65535, help="Port to listen on.")] = 8080,
    max_wait_ms: Annotated[float, Opt(min=0, help="How long a request may wait for others to be searched with it.", rich_help_panel="Batching")] = 10.0,
    max_queued_lines: Annotated[int, Opt(min=1, help="Lines waiting to be searched, per model, beyond which requests get 503.", rich_help_panel="Batching")] = 10_000,
    workers: Annotated[int, Opt(min=0, help="Rounds searched side by side, each by a forked worker process on its share of the cores; 0 = one per core on a Linux CPU, 1 on a GPU; 1 searches in the server's own process. Per model.", rich_help_panel="Batching")] = 0,
    threads: Annotated[int, Opt(min=0, help="torch threads for each search; 0 = the cores shared among the --workers (with --workers 1, torch's default: all of them).", rich_help_panel="Batching")] = 0,
    batch_size: Annotated[int | None, Opt(help="Sentences searched together. [default: the model's, 64]", show_default=False, rich_help_panel="Batching")] = None,
    max_lines: Annotated[int, Opt(min=1, help="Lines a request may hold (413 beyond).", rich_help_panel="Limits")] = 1_000,
    max_line_chars: Annotated[int, Opt(min=1, help="Characters a line may hold (413 beyond).", rich_help_panel="Limits")] = 10_000,
    max_body_bytes: Annotated[int, Opt(min=1, help="Bytes a request's body may hold (413 beyond).", rich_help_panel="Limits")] = 1_000_000,
    max_beam: Annotated[int, Opt(min=1, help="The largest beam_size and nbest a request may ask for (413 beyond).", rich_help_panel="Limits")] = 64,
    max_source_pieces: Annotated[int, Opt(min=0, help="Translate only the first N pieces of a longer line (0 = no limit).", rich_help_panel="Limits")] = MAX_SOURCE_PIECES,
    max_output_pieces: Annotated[int, Opt(min=0, help="The longest output, in pieces, a request's settings may allow one of its lines: the search's length limit, max_length_ratio x the line's pieces (after --max-source-pieces) + max_length_constant, or min_length if more. A request that could go further gets 413, naming the line (0 = no limit). The default lets the usual ratio, 2, through for any line --max-source-pieces allows.", rich_help_panel="Limits")] = MAX_OUTPUT_PIECES,
    device: Annotated[str, Opt(help="auto, cpu or cuda (auto: the GPU when CUDA is available; int8 runs on the CPU).", rich_help_panel="Search")] = "auto",
    precision: Annotated[str | None, Opt(help="fp32, or bf16 for speed on CPUs with bf16 units. [default: fp32]", show_default=False, rich_help_panel="Search")] = None,
    quantize: Annotated[str | None, Opt(help="int8: int8 weights for the decoder's linear layers (faster on CPU), or none. [default: none]", show_default=False, rich_help_panel="Search")] = None,
) -> None:
    """Serve models over HTTP: POST /translate, GET /models, GET /health, GET /openapi.json."""
    with user_errors():
        from seq2seq import Seq2SeqError

        try:
            import uvicorn

            from cli import serving
        except ImportError:
            raise Seq2SeqError("seq2seq serve needs the serve extra: pip install 'seq2seq[serve]'") from None
        from cli.signals import EXIT_CODES, StopNow, stop_requests

        limits = serving.Limits(max_lines=max_lines, max_line_chars=max_line_chars, max_body_bytes=max_body_bytes,
                                max_beam=max_beam)
        models = {label: _served(path, device=device, max_wait_s=max_wait_ms / 1000, max_queued_lines=max_queued_lines,
                                 max_source_pieces=max_source_pieces, max_output_pieces=max_output_pieces,
                                 workers=workers, threads=threads, batch_size=batch_size, precision=precision,
                                 quantize=quantize)
                  for label, path in _names(model, name).items()}
        say(f"serving {', '.join(models)} on http://{host}:{port} (Ctrl-C or SIGTERM stops)")
        # uvicorn answers the first signal by finishing the requests in flight, then raises it again on its
        # way out: here it only marks the stop as asked for, and the command ends normally.
        try:
            with stop_requests():
                uvicorn.run(serving.application(models, limits), host=host, port=port, log_config=_logging_to_stderr())
        except StopNow as stopped:  # a second signal: uvicorn left at once, without waiting for requests
            raise typer.Exit(EXIT_CODES[stopped.reason]) from None


def _logging_to_stderr() -> dict:
    """uvicorn's logging, its access lines on stderr with the rest: stdout is for results, and serve has none."""
    from copy import deepcopy

    from uvicorn.config import LOGGING_CONFIG

    config = deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    return config


def _names(paths: list[Path], names: list[str] | None) -> dict[str, Path]:
    """Each model's name: --name in order, else the file's name without its suffix; names must differ."""
    from seq2seq import ConfigError

    if names and len(names) != len(paths):
        raise ConfigError(f"{len(names)} --name for {len(paths)} --model: give one name per model, in the same order")
    labels = names or [path.stem for path in paths]
    repeated = next((label for label in labels if labels.count(label) > 1), None)
    if repeated is not None:
        raise ConfigError(f"two models are named {repeated!r}: give each a --name")
    return dict(zip(labels, paths))


def _served(path: Path, *, device: str, max_wait_s: float, max_queued_lines: int, max_source_pieces: int,
            max_output_pieces: int = 0, workers: int = 1, threads: int = 0, **search: object) -> Served:
    """One model file made ready to serve: its translator behind a batcher, and its `info` facts."""
    from dataclasses import replace

    from seq2seq import Batcher, Translator, describe_checkpoint, load_checkpoint

    from cli.serving import Served

    loaded = load_checkpoint(path)
    settings = replace(loaded.config.search, **{name: value for name, value in search.items() if value is not None})
    translator = Translator(loaded.model, loaded.tokenizers, settings, device=device)  # checks the settings
    batcher = Batcher(translator, max_wait_s=max_wait_s, max_queued_lines=max_queued_lines,
                      max_source_pieces=max_source_pieces, max_output_pieces=max_output_pieces, threads=threads,
                      workers=workers)
    return Served(batcher, describe_checkpoint(path, loaded))


def register(app: typer.Typer) -> None:
    app.command(epilog=EPILOG, no_args_is_help=True)(serve)
