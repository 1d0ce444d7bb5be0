"""What keeps one client of the search service from starving the others. The server's own
settings first (uvicorn's h11 with its header cap, its connection limit and keep-alive); then
what uvicorn lacks, kept small: a deadline for a request to arrive whole, a body cap read as a
stream, a header count, a request timeout and a token bucket per API key."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import h11
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from policyfresh.store.config import ServiceLimits

RETRY_AFTER_BUSY = 1  # seconds a client told 503 should wait


class BodyTooLargeError(Exception):
    """The request body is longer than the service takes."""


class TokenBucket:
    """`rate` tokens a second, held up to `burst`; each request takes one."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.updated = float(burst), time.monotonic()

    def take(self) -> float:
        """0 when a token was taken; else the seconds until there is one, none taken."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


def retry_after(seconds: float) -> dict[str, str]:
    """The `Retry-After` header for a wait of `seconds`, in whole seconds, at least one."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused as soon as it is known to pass `max_bytes`: from its declared length
    before any of it is read, else while it streams in, never holding more than the cap."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLargeError
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


class RequestLimits:
    """Refuses a request with too many headers (431) and answers 503 with `Retry-After` for
    one not answered within `request_timeout`."""

    def __init__(self, app: ASGIApp, limits: ServiceLimits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope["headers"]) > self.limits.max_headers:
            refused = JSONResponse({"error": "too many request headers"}, 431)
            await refused(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            async with asyncio.timeout(self.limits.request_timeout):
                await self.app(scope, receive, sending)
        except TimeoutError:
            if started:
                raise
            late = f"no answer within {self.limits.request_timeout:g} s; retry later"
            timed_out = JSONResponse({"error": late}, 503, retry_after(RETRY_AFTER_BUSY))
            await timed_out(scope, receive, send)


def read_deadline_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, where a request must arrive whole, headers and body, within
    `seconds` of its first byte (or of the connection): a silent or trickling client is cut
    off. uvicorn itself times only the idle wait between requests."""

    class ReadDeadline(H11Protocol):
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.arm()

        def data_received(self, data: bytes) -> None:
            if self.deadline is None:  # the first byte of the next request on this connection
                self.arm()
            super().data_received(data)
            if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):  # arrived whole
                self.disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self.disarm()
            super().connection_lost(exc)

        def arm(self) -> None:
            self.deadline = self.loop.call_later(seconds, self.transport.close)

        def disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

    return ReadDeadline


def server_config(app: Any, limits: ServiceLimits, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration of the service with its limits: h11 with its header cap, the
    read deadline, and at most `max_connections` connections (uvicorn answers 503 past it)."""
    return uvicorn.Config(
        app,
        http=read_deadline_protocol(limits.read_timeout),
        h11_max_incomplete_event_size=limits.max_header_bytes,
        limit_concurrency=limits.max_connections,
        **options,
    )
