"""An HTTP JSON API over translators (the optional `serve` extra: Starlette): what `seq2seq serve` runs, an
application of the library as the commands are (`seq2seq.batching` does the batching, without HTTP).

    GET  /            a page to try the models in a browser (`page.html`: no build step, nothing from elsewhere)
    POST /translate   {"text": ["Ein Hund rennt."], "beam_size": 4, "nbest": 2, "alignment": true, "attention": true}
    GET  /models      each model's name, file, step, size, vocabulary and validation scores
    GET  /health      {"status": "ok"}
    GET  /openapi.json

Every answer but the page is JSON, errors too: {"error": "one line"} with 400 (a body that is not JSON text),
413 (over the server's limits), 422 (a wrong field, type or setting), 503 (too many lines waiting, or a
search's worker process died) or 500 (a bug, whose traceback goes to the server's log, never to the
client). Each model's requests go through its own `Batcher`, closed when the application shuts down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from seq2seq import Batcher, ConfigError, OverLimit, QueueFull, Seq2SeqError, Translation, Translator, WorkerDied

# The settings a request may give besides text and model; the rest of the search settings (batch_size,
# precision, quantize) belong to the server, which loads the model with them.
REQUEST_SETTINGS = ("beam_size", "length_penalty", "length_norm", "max_length_ratio", "max_length_constant",
                    "min_length", "no_repeat_ngram", "coverage_penalty", "sample", "temperature", "top_k", "top_p", "seed")
OUTPUT_FIELDS = {"nbest": (int, 1), "alignment": (bool, False), "attention": (bool, False),
                 "replace_unk": (bool, False)}
FIELDS = ("text", "model", *OUTPUT_FIELDS, *REQUEST_SETTINGS)
# The page's own script and style only, and requests to this server: a browser fetches nothing from elsewhere.
PAGE_POLICY = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; over them it gets 413."""

    max_lines: int = 1_000
    max_line_chars: int = 10_000
    max_body_bytes: int = 1_000_000
    max_beam: int = 64          # beam_size and nbest: the search's memory grows with them


class Served(NamedTuple):
    """A model as the API shows it: its batcher, and what `GET /models` says of it (`describe_checkpoint`)."""

    batcher: Batcher
    facts: dict[str, Any]


class Refused(Exception):
    """A request the API answers with `status` and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def application(models: Mapping[str, Served], limits: Limits = Limits()) -> Starlette:
    """The ASGI application serving `models` by name; requests without "model" go to the first."""

    async def translate(request: Request) -> JSONResponse:
        fields = _fields(await _body(request, limits.max_body_bytes))
        name = fields.pop("model", None) or next(iter(models))
        if not isinstance(name, str) or name not in models:
            raise Refused(422, f"unknown model {name!r}; this server has {', '.join(map(repr, models))}")
        lines = _lines(fields.pop("text", None), limits)
        outputs = {field: _typed(fields, field, kind, default) for field, (kind, default) in OUTPUT_FIELDS.items()}
        for field, value in (("beam_size", fields.get("beam_size")), ("nbest", outputs["nbest"])):
            if isinstance(value, int) and value > limits.max_beam:
                raise Refused(413, f"{field} {value} is over this server's limit of {limits.max_beam} (--max-beam)")
        batcher = models[name].batcher
        # the batcher's alignment flag keeps each hypothesis's attention: the attention field needs it too
        future = batcher.submit(lines, options=fields, nbest=outputs["nbest"], replace_unk=outputs["replace_unk"],
                                alignment=outputs["alignment"] or outputs["attention"])
        results = await asyncio.wrap_future(future)
        return JSONResponse({"model": name, "translations": [_translation(hyps, batcher.translator, **outputs)
                                                             for hyps in results]})

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(page_html, headers={"Content-Security-Policy": PAGE_POLICY})

    async def list_models(request: Request) -> JSONResponse:
        return JSONResponse({"models": [{"name": name, **served.facts} for name, served in models.items()]})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(openapi_document(list(models)))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        for served in models.values():  # after the server's last request: what is queued is still answered
            await asyncio.to_thread(served.batcher.close)

    page_html = resources.files("cli").joinpath("page.html").read_text(encoding="utf-8")
    routes = [Route("/", page), Route("/translate", translate, methods=["POST"]), Route("/models", list_models),
              Route("/health", health), Route("/openapi.json", openapi)]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        Refused: lambda request, error: _error(error.status, str(error)),
        ConfigError: lambda request, error: _error(422, str(error)),
        QueueFull: lambda request, error: _error(503, str(error)),
        OverLimit: lambda request, error: _error(413, str(error)),
        WorkerDied: lambda request, error: _error(503, str(error)),
        Seq2SeqError: lambda request, error: _error(422, str(error)),
        HTTPException: lambda request, error: _error(error.status_code, error.detail),
        Exception: _internal_error,
    })


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.splitlines())}, status_code=status)


def _internal_error(request: Request, error: Exception) -> JSONResponse:
    """A bug's answer; the server (uvicorn) logs its traceback."""
    return _error(500, "internal error: the server's log has the details")


async def _body(request: Request, limit: int) -> bytes:
    """The request's body, read no further than `limit` bytes (a Content-Length over it is refused unread)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"the body is {int(declared):,} bytes; the limit is {limit:,} (--max-body-bytes)")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise Refused(413, f"the body is over the limit of {limit:,} bytes (--max-body-bytes)")
    except ClientDisconnect:
        raise Refused(400, "the client left before sending the whole body") from None
    return bytes(body)


def _fields(body: bytes) -> dict[str, Any]:
    """The body as a JSON object with known fields only."""
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise Refused(400, "the body is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise Refused(400, f"the body is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise Refused(422, 'the body must be a JSON object, e.g. {"text": ["a sentence"]}')
    unknown = [field for field in value if field not in FIELDS]
    if unknown:
        raise Refused(422, f"unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
    return value


def _lines(text: Any, limits: Limits) -> list[str]:
    """The "text" field: a list of strings within the limits."""
    if not isinstance(text, list) or not all(isinstance(line, str) for line in text):
        raise Refused(422, '"text" must be a list of strings, one sentence each')
    if len(text) > limits.max_lines:
        raise Refused(413, f"{len(text):,} lines; the limit is {limits.max_lines:,} a request (--max-lines)")
    for number, line in enumerate(text):
        if len(line) > limits.max_line_chars:
            raise Refused(413, f"line {number} is {len(line):,} characters long; the limit is "
                               f"{limits.max_line_chars:,} (--max-line-chars)")
    return text


def _typed(fields: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """Take field `name` out of `fields`: a `kind` (not a bool for an int), or `default` when absent or null."""
    value = fields.pop(name, None)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Refused(422, f"{name!r} must be {'true or false' if kind is bool else 'a whole number'}, got {value!r}")
    return value


def _translation(hypotheses: list[Translation], translator: Translator, *, nbest: int, alignment: bool, attention: bool,
                 replace_unk: bool) -> dict[str, Any]:
    """One line's answer: the best translation's text and score, its alignment, attention and the n-best if asked for."""
    def one(hyp: Translation) -> dict[str, Any]:
        return {"text": hyp.text, "score": hyp.score, **({"alignment": hyp.alignment} if alignment else {}),
                **({"attention": _attention(hyp, translator)} if attention else {})}

    return {**one(hypotheses[0]), **({"nbest": [one(hyp) for hyp in hypotheses]} if nbest > 1 else {})}


def _attention(hyp: Translation, translator: Translator) -> dict[str, Any] | None:
    """A hypothesis's attention as the page draws it: the weights (a row per target piece, a column per source
    piece, rounded to 4 places) and both sides' pieces, each ending with the EOS the model wrote or read;
    None for an empty line, which the model never read."""
    if hyp.attention is None:
        return None
    tokenizers = translator.tokenizers
    return {"source": [*tokenizers.src.pieces(hyp.attention.src_tokens), "</s>"],
            "target": [*tokenizers.tgt.pieces(hyp.tokens), "</s>"],
            "weights": [[round(weight, 4) for weight in row] for row in hyp.attention.weights.tolist()]}


def openapi_document(model_names: list[str]) -> dict[str, Any]:
    """The API's OpenAPI 3.1 description (GET /openapi.json)."""
    number, boolean, integer = {"type": "number"}, {"type": "boolean"}, {"type": "integer"}
    setting_types = {"beam_size": integer, "length_norm": boolean, "max_length_constant": integer, "min_length": integer,
                     "no_repeat_ngram": integer, "sample": boolean, "top_k": integer, "seed": integer}
    pieces = {"type": "array", "items": {"type": "string"}}
    attention = {"type": ["object", "null"], "description": "with attention: true (null for an empty line)", "properties": {
        "source": {**pieces, "description": "the source's pieces, then </s>"},
        "target": {**pieces, "description": "the output's pieces, then </s>"},
        "weights": {"type": "array", "items": {"type": "array", "items": number},
                    "description": "a row per target piece, a column per source piece; each row sums to 1"}}}
    hypothesis = {"type": "object", "properties": {
        "text": {"type": "string"}, "score": {**number, "description": "natural-log probability of the output"},
        "alignment": {"type": "array", "items": {"type": "array", "items": integer, "minItems": 2, "maxItems": 2},
                      "description": "(source piece, target piece) index pairs, with alignment: true"},
        "attention": attention}}
    request = {"type": "object", "required": ["text"], "additionalProperties": False, "properties": {
        "text": {"type": "array", "items": {"type": "string"}},
        "model": {"type": "string", "enum": model_names, "default": model_names[0]},
        "nbest": {**integer, "default": 1}, "alignment": {**boolean, "default": False},
        "attention": {**boolean, "default": False},
        "replace_unk": {**boolean, "default": False},
        **{name: setting_types.get(name, number) for name in REQUEST_SETTINGS}}}
    answer = {"type": "object", "properties": {"model": {"type": "string"}, "translations": {"type": "array", "items": {
        **hypothesis, "properties": {**hypothesis["properties"], "nbest": {"type": "array", "items": hypothesis}}}}}}
    error = {"description": "an error", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"error": {"type": "string"}}}}}}

    def ok(schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": "OK", "content": {"application/json": {"schema": schema}}}

    return {"openapi": "3.1.0", "info": {"title": "seq2seq", "version": "1"}, "paths": {
        "/translate": {"post": {"summary": "Translate lines; unset settings are the model's (as with seq2seq translate)",
                                "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
                                "responses": {"200": ok(answer), **{code: error for code in ("400", "413", "422", "503")}}}},
        "/models": {"get": {"summary": "The models served", "responses": {"200": ok({"type": "object"})}}},
        "/health": {"get": {"summary": "Whether the server is up", "responses": {"200": ok({"type": "object"})}}},
    }}
