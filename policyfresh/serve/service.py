"""The search service on Starlette: `POST /search` with receipts, `GET /health`,
`GET /traces/{id}`, `GET /impact` (the key's own answers that a publication made wrong). The
model stays loaded, the served release is re-read when its tag moves, and a caller reads only
its own receipts and the classifications its API key grants. Every limit (`limits`) answers
plainly and no answer echoes the input or names a path or a table."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

import polars as pl
from anyio import CapacityLimiter, to_thread
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from policyfresh.index.embedding import Embedder
from policyfresh.index.vectors import vectors_dataset
from policyfresh.ingest.pii import detect_pii
from policyfresh.release.releases import read_releases, served_release
from policyfresh.serve.api_keys import ApiKeys
from policyfresh.serve.batching import Batcher, Busy
from policyfresh.serve.impact import ImpactError, impact, parse_since
from policyfresh.serve.limits import (
    RETRY_AFTER_BUSY,
    BodyTooLargeError,
    RequestLimits,
    TokenBucket,
    read_body,
    retry_after,
)
from policyfresh.serve.query_encoder import prepared_encoder
from policyfresh.serve.search import (
    Caller,
    Index,
    IndexNotBuiltError,
    ModelMismatchError,
    SearchResult,
    answer,
    open_index,
)
from policyfresh.serve.trace_store import MAX_CALLER, write_traces
from policyfresh.serve.traces import TraceNotFoundError, explain_trace
from policyfresh.store.config import Settings

log = logging.getLogger(__name__)

RELOAD_SECONDS = 1.0  # how often a request may look whether the `served` tag moved
ENCODE_BATCH = 32
TRACE_BATCH = 256
MAX_K = 50
IMPACT_TEXTS = (("old_text", "classification"), ("new_text", "new_classification"))
TRACE_ID = re.compile(r"[0-9a-f]{32}")
HEALTH_THREADS = 2  # /health has its own threads: searches never make it wait for one
# What an error says: fixed sentences, never the input, a path or a table.
NO_RELEASE = "no release is published yet: run a refresh"
OTHER_MODEL = "the published release needs another model: restart the service with it"
NO_TRACE = "no such trace"
NO_PUBLICATION = "no such publication"
BUSY = "the service is busy; retry after a moment"
TOO_LARGE = "the body is too large"
TOO_MANY = "too many requests for this key"
Question = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class SearchRequest(BaseModel):
    """The body of `POST /search`."""

    model_config = ConfigDict(extra="forbid")
    question: Question
    k: int = Field(5, ge=1, le=MAX_K, strict=True, description="hits to return")
    caller: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CALLER)] = Field(
        "api", description="recorded in the trace: the application asking"
    )


class Error(BaseModel):
    error: str
    problems: list[dict[str, str]] | None = None


class Served:
    """The release being served, replaced whole when the `served` tag moves. A request takes
    one `Index` and answers from it alone, so no response mixes two releases."""

    def __init__(self, settings: Settings, model_id: str) -> None:
        self.settings = settings
        self.model_id = model_id
        self.index: Index | None = None
        self.published_at: datetime | None = None
        self.problem: str | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def current(self) -> Index:
        with self._lock:
            if self.index is None or time.monotonic() - self._checked >= RELOAD_SECONDS:
                self._reload()
                self._checked = time.monotonic()
            assert self.index is not None
            return self.index

    def _reload(self) -> None:
        if self.index is not None and self.tagged() == self.index.release:
            return
        try:
            index = open_index(self.settings)
            index.check_model(self.model_id)
        except ModelMismatchError as exc:  # keep serving what this model can encode for
            if self.index is None:
                raise
            self.problem = f"release not served: {exc}; restart the service with that model"
            return
        releases = read_releases(self.settings).filter(pl.col("release") == index.release)
        self.published_at = releases["published_at"][0] if releases.height else None
        self.index, self.problem = index, None
        log.info("serving release %s (index version %d)", index.release, index.version)

    def tagged(self) -> int | None:
        """The release the `served` tag points at now."""
        return served_release(vectors_dataset(self.settings))


def _entitled(hit: dict[str, Any], entitled: frozenset[str]) -> dict[str, Any]:
    """An impact hit with each text the key is not entitled to read left out."""
    shown = dict(hit)
    for text, classification in IMPACT_TEXTS:
        if hit[text] is not None and hit[classification] not in entitled:
            shown[text], shown["withheld"] = None, True
    return shown


def _error(code: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=code)


class KeyGate:
    """Who may call: a known key within its rate (a token bucket per key, made when the
    service starts, so there is one per key and never more)."""

    def __init__(self, keys: ApiKeys) -> None:
        self.keys = keys
        self.buckets = {g.key_id: TokenBucket(g.rate, g.burst) for g in keys.grants.values()}

    def admit(self, request: Request) -> Caller:
        """The caller of a request with a valid key; 401 without one, 429 past its rate."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        grant = self.keys.grant(key.strip()) if scheme.lower() == "bearer" else None
        if grant is None:
            raise HTTPException(
                401, "a valid API key is required: Authorization: Bearer KEY",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        wait = self.buckets[grant.key_id].take()
        if wait:
            raise HTTPException(429, TOO_MANY, headers=retry_after(wait))
        return Caller("api", grant.classifications, grant.key_id)


async def _search_request(request: Request, max_bytes: int) -> SearchRequest:
    try:
        body = json.loads(await read_body(request, max_bytes))
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise HTTPException(422, "the body must be a JSON object") from None
    try:
        return SearchRequest.model_validate(body)
    except ValidationError as exc:  # field and problem only: the input may hold PII
        problems = [
            {"field": ".".join(map(str, e["loc"])) or "body", "problem": e["msg"]}
            for e in exc.errors()
        ]
        raise RequestInvalid(problems) from None


class Contained:
    """Turns an unexpected exception into a JSON 500 and logs only its type and place: its
    message may quote a question, and letting it through would also drop the connection. A
    client that hung up is no failure of the service: one line at INFO."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        responded = False

        async def sending(message: Message) -> None:
            nonlocal responded
            responded = responded or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except ClientDisconnect:
            log.info("%s %s: the client hung up before its request arrived whole",
                     scope["method"], scope["path"])  # fmt: skip
        except Exception as exc:
            if responded or scope["type"] != "http":
                raise
            where = traceback.extract_tb(exc.__traceback__)[-1]
            log.error("%s %s failed: %s at %s:%d", scope["method"], scope["path"],
                      type(exc).__name__, where.filename, where.lineno)  # fmt: skip
            response = _error(500, "internal error; the service log has the details")
            await response(scope, receive, send)


class RequestInvalid(Exception):
    def __init__(self, problems: list[dict[str, str]]) -> None:
        self.problems = problems


def create_app(settings: Settings, embedder: Embedder, keys: ApiKeys) -> Starlette:
    """The service over the served release of `settings`, encoding questions with the ONNX
    export of `embedder` (exported at start-up if needed), or with `embedder` itself."""
    limits = settings.service
    served = Served(settings, embedder.model_id)
    gate = KeyGate(keys)
    model = prepared_encoder(settings, embedder)
    encoder: Batcher[str, Any] = Batcher(
        lambda qs: list(model.encode(qs)), ENCODE_BATCH, limits.max_queue
    )

    def record(traces: list[dict[str, Any]]) -> list[None]:
        write_traces(settings, traces, run_id="service")
        return [None] * len(traces)

    recorder: Batcher[dict[str, Any], None] = Batcher(record, TRACE_BATCH, limits.max_queue)
    health_threads = CapacityLimiter(HEALTH_THREADS)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(model.load)  # the first request must not wait for it
        await run_in_threadpool(detect_pii, "")  # nor its trace for the question's redaction
        try:
            await run_in_threadpool(served.current)
        except IndexNotBuiltError as exc:  # start anyway: the first release will be picked up
            log.warning("%s", exc)
        workers = [asyncio.create_task(b.run()) for b in (encoder, recorder)]
        yield
        for worker in workers:
            worker.cancel()

    async def search(request: Request) -> JSONResponse:
        caller = gate.admit(request)  # before the body: no key, no 422 either
        body = await _search_request(request, limits.max_body_bytes)
        started = time.perf_counter()
        index = await run_in_threadpool(served.current)
        vector = await encoder.submit(body.question)
        result, trace = await run_in_threadpool(
            answer, index, body.question, vector, body.k, replace(caller, name=body.caller),
            embedder.model_id, started,
        )  # fmt: skip
        await recorder.submit(trace)
        return JSONResponse(result.to_dict())

    async def health(request: Request) -> JSONResponse:
        try:
            index = await to_thread.run_sync(served.current, limiter=health_threads)
        except IndexNotBuiltError:
            return _error(503, NO_RELEASE, status="no release")
        tagged = await to_thread.run_sync(served.tagged, limiter=health_threads)
        published = served.published_at
        return JSONResponse({
            "status": "ok" if served.problem is None else "degraded",
            "release": index.release,
            "index_version": index.version,
            "published_at": published.isoformat() if published else None,
            "age_seconds": round((datetime.now(tz=UTC) - published).total_seconds())
            if published else None,
            "newer_published": tagged != index.release,
            "published_release": tagged,
            "model_id": embedder.model_id,
            "problem": served.problem,
        })  # fmt: skip

    async def trace(request: Request) -> JSONResponse:
        caller = gate.admit(request)
        trace_id = request.path_params["trace_id"]
        if not TRACE_ID.fullmatch(trace_id):
            raise TraceNotFoundError(NO_TRACE)
        # Only the key's own traces: another key's is not found, by the same read.
        report = await run_in_threadpool(explain_trace, settings, trace_id, caller.api_key_id)
        hits = [
            h if h["classification"] in caller.entitled else {**h, "text": None, "withheld": True}
            for h in report.hits
        ]
        fields = report.trace | {"searched_at": report.trace["searched_at"].isoformat()}
        return JSONResponse({"trace": fields, "hits": hits, "stale_hits": report.stale_hits,
                             "index_retained": report.index_retained})  # fmt: skip

    async def impact_of_key(request: Request) -> JSONResponse:
        caller = gate.admit(request)
        raw = request.query_params.get("since")
        try:
            since = parse_since(raw) if raw is not None else None
        except ImpactError:
            problem = "a release number or an ISO time"
            raise RequestInvalid([{"field": "since", "problem": problem}]) from None
        found = await run_in_threadpool(impact, settings, since=since, api_key_id=caller.api_key_id)
        entry = found.to_dict()
        for given in entry["answers"]:  # text of a classification the key may not read: none
            given["hits"] = [_entitled(hit, caller.entitled) for hit in given["hits"]]
        return JSONResponse(entry)

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(openapi_schema())

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestInvalid)
        return _error(422, "invalid request", problems=exc.problems)

    async def no_release(request: Request, exc: Exception) -> JSONResponse:
        return _error(503, NO_RELEASE)

    async def other_model(request: Request, exc: Exception) -> JSONResponse:
        return _error(503, OTHER_MODEL)

    async def busy(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": BUSY}, 503, retry_after(RETRY_AFTER_BUSY))

    async def too_large(request: Request, exc: Exception) -> JSONResponse:
        # The rest of the body is never read: the connection closes after the answer.
        return JSONResponse({"error": TOO_LARGE}, 413, {"Connection": "close"})

    async def no_trace(request: Request, exc: Exception) -> JSONResponse:
        return _error(404, NO_TRACE)

    async def no_publication(request: Request, exc: Exception) -> JSONResponse:
        return _error(404, NO_PUBLICATION)

    app = Starlette(
        routes=[
            Route("/search", search, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/traces/{trace_id}", trace, methods=["GET"]),
            Route("/impact", impact_of_key, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={
            HTTPException: http_error,
            RequestInvalid: invalid,
            IndexNotBuiltError: no_release,
            ModelMismatchError: other_model,
            TraceNotFoundError: no_trace,
            ImpactError: no_publication,
            Busy: busy,
            BodyTooLargeError: too_large,
        },
        middleware=[Middleware(Contained), Middleware(RequestLimits, limits=limits)],
    )
    app.state.limits = limits  # for `server_config`: the server's half of the limits
    return app


def openapi_schema() -> dict[str, Any]:
    """The OpenAPI document, its schemas generated from the request and result types."""
    components: dict[str, Any] = {}

    def ref(kind: type) -> dict[str, Any]:
        generated = TypeAdapter(kind).json_schema(ref_template="#/components/schemas/{model}")
        components.update(generated.pop("$defs", {}))
        components[kind.__name__] = generated
        return {"$ref": f"#/components/schemas/{kind.__name__}"}

    def responses(ok: str, result: dict[str, Any] | None, *errors: int) -> dict[str, Any]:
        error = {"content": {"application/json": {"schema": ref(Error)}}}
        described = {
            "200": {"description": ok}
            | ({"content": {"application/json": {"schema": result}}} if result else {})
        }
        return described | {str(code): {"description": ERRORS[code]} | error for code in errors}

    bearer = [{"bearer": []}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "policyfresh search", "version": "1"},
        "paths": {
            "/search": {"post": {
                "summary": "Hybrid search of the served release, with a receipt per hit",
                "security": bearer,
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": ref(SearchRequest)}}},
                "responses": responses("hits with receipts", ref(SearchResult),
                                       401, 413, 422, 429, 431, 503),
            }},
            "/health": {"get": {
                "summary": "The release served, its age, and whether a newer one is published",
                "responses": responses("serving", None, 503),
            }},
            "/traces/{trace_id}": {"get": {
                "summary": "Replay a trace made with the same key",
                "security": bearer,
                "parameters": [{"name": "trace_id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": responses("the trace and its hits now", None, 401, 404, 429),
            }},
            "/impact": {"get": {
                "summary": "This key's answers whose quoted text a publication no longer serves",
                "security": bearer,
                "parameters": [{"name": "since", "in": "query", "required": False,
                                "description": "a release or an ISO time; default: the impact "
                                "of the latest publication",
                                "schema": {"type": "string"}}],
                "responses": responses("releases, documents, answers and totals", None,
                                       401, 404, 422, 429),
            }},
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }  # fmt: skip


ERRORS = {
    401: "no valid API key",
    404: "no such trace for this key, or no such publication",
    413: "the body is larger than POLICYFRESH_SERVE_MAX_BODY_BYTES",
    422: "the body is not a valid request",
    429: "the key is past its rate; Retry-After says when to come back",
    431: "more request headers than POLICYFRESH_SERVE_MAX_HEADERS",
    503: "no release is published yet, or the service is busy (with Retry-After)",
}
