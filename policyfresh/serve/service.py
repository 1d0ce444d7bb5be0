"""The search service on Starlette: `POST /search` with receipts, `GET /health`,
`GET /traces/{id}`, `GET /impact` (the key's own answers that a publication made wrong). The
model stays loaded, the served release is re-read when its tag moves, and a caller reads only
its own receipts and the classifications its API key grants."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from policyfresh.index.embedding import Embedder
from policyfresh.index.vectors import vectors_dataset
from policyfresh.ingest.pii import detect_pii
from policyfresh.release.releases import read_releases, served_release
from policyfresh.serve.api_keys import ApiKeys, key_id
from policyfresh.serve.batching import Batcher
from policyfresh.serve.impact import ImpactError, impact, parse_since
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
from policyfresh.serve.trace_store import write_traces
from policyfresh.serve.traces import TraceNotFoundError, explain_trace
from policyfresh.store.config import Settings

log = logging.getLogger(__name__)

RELOAD_SECONDS = 1.0  # how often a request may look whether the `served` tag moved
ENCODE_BATCH = 32
TRACE_BATCH = 256
MAX_K = 50
IMPACT_TEXTS = (("old_text", "classification"), ("new_text", "new_classification"))
Question = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class SearchRequest(BaseModel):
    """The body of `POST /search`."""

    model_config = ConfigDict(extra="forbid")
    question: Question
    k: int = Field(5, ge=1, le=MAX_K, description="hits to return")
    caller: Annotated[str, StringConstraints(min_length=1, max_length=100)] = Field(
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


def _caller(request: Request, keys: ApiKeys, name: str = "api") -> Caller:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    entitled = keys.entitlement(key.strip()) if scheme.lower() == "bearer" else None
    if entitled is None:
        raise HTTPException(
            401, "a valid API key is required: Authorization: Bearer KEY",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    return Caller(name, entitled, key_id(key.strip()))


async def _search_request(request: Request) -> SearchRequest:
    try:
        body = await request.json()
    except ValueError:
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
    message may quote a question, and letting it through would also drop the connection."""

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
    served = Served(settings, embedder.model_id)
    model = prepared_encoder(settings, embedder)
    encoder: Batcher[str, Any] = Batcher(lambda qs: list(model.encode(qs)), ENCODE_BATCH)

    def record(traces: list[dict[str, Any]]) -> list[None]:
        write_traces(settings, traces, run_id="service")
        return [None] * len(traces)

    recorder: Batcher[dict[str, Any], None] = Batcher(record, TRACE_BATCH)

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
        caller = _caller(request, keys)  # before the body: no key, no 422 either
        body = await _search_request(request)
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
            index = await run_in_threadpool(served.current)
        except IndexNotBuiltError as exc:
            return _error(503, str(exc), status="no release")
        tagged = await run_in_threadpool(served.tagged)
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
        caller = _caller(request, keys)
        trace_id = request.path_params["trace_id"]
        report = await run_in_threadpool(explain_trace, settings, trace_id)
        if report.trace.get("api_key_id") != caller.api_key_id:  # only the key's own traces
            raise TraceNotFoundError(f"no trace {trace_id!r}")
        hits = [
            h if h["classification"] in caller.entitled else {**h, "text": None, "withheld": True}
            for h in report.hits
        ]
        fields = report.trace | {"searched_at": report.trace["searched_at"].isoformat()}
        return JSONResponse({"trace": fields, "hits": hits, "stale_hits": report.stale_hits,
                             "index_retained": report.index_retained})  # fmt: skip

    async def impact_of_key(request: Request) -> JSONResponse:
        caller = _caller(request, keys)
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

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        return _error(503, str(exc))

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return _error(404, str(exc))

    return Starlette(
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
            IndexNotBuiltError: unavailable,
            ModelMismatchError: unavailable,
            TraceNotFoundError: not_found,
            ImpactError: not_found,
        },
        middleware=[Middleware(Contained)],
    )


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
                "responses": responses("hits with receipts", ref(SearchResult), 401, 422, 503),
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
                "responses": responses("the trace and its hits now", None, 401, 404),
            }},
            "/impact": {"get": {
                "summary": "This key's answers whose quoted text a publication no longer serves",
                "security": bearer,
                "parameters": [{"name": "since", "in": "query", "required": False,
                                "description": "a release or an ISO time; default: the impact "
                                "of the latest publication",
                                "schema": {"type": "string"}}],
                "responses": responses("releases, documents, answers and totals", None,
                                       401, 404, 422),
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
    422: "the body is not a valid request",
    503: "no release is published yet",
}
