"""Pure ASGI middleware: request metrics, a hard request-body size limit and a body read
timeout."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import metrics

log = logging.getLogger("rankly")

#: The status counted for a request whose client went away before it was answered (nginx's
#: convention; nothing is sent, the client is gone).
CLIENT_CLOSED = 499


def _json_error(status: int, field: str, message: str,
                close: bool = False) -> tuple[dict, bytes]:
    body = json.dumps({"error": {"field": field, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if close:  # uvicorn closes the connection after a response that says so
        headers.append((b"connection", b"close"))
    start = {"type": "http.response.start", "status": status, "headers": headers}
    return start, body


_NO_BODY_METHODS = frozenset(("GET", "HEAD"))
#: Distinct (method, root_path, path) seen by MetricsMiddleware before its template memo resets.
_TEMPLATE_MEMO_MAX = 4096


class BodyLimitMiddleware:
    """Answer 413 once a request body exceeds ``max_bytes``, without reading the rest, and
    408 (then close the connection) when the body is not all received within
    ``read_timeout_s`` of the request's start (``None`` or <= 0: no timeout), or when, past
    ``rate_grace_s``, it arrives slower than ``min_rate`` bytes per second on average since
    the request's start (0: no minimum; Kestrel's ``MinRequestBodyDataRate``). The minimum
    rate frees a trickling client's connection, and its ingest slot on ``/events``, long
    before the timeout.

    Checks ``Content-Length`` up front, and counts streamed chunks for chunked uploads.
    """

    def __init__(self, app: ASGIApp, max_bytes: int,
                 read_timeout_s: float | None = None, min_rate: float = 0.0,
                 rate_grace_s: float = 0.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s if read_timeout_s and read_timeout_s > 0 else None
        self.min_rate = min_rate if min_rate > 0 else 0.0
        self.rate_grace_s = max(0.0, rate_grace_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        framed = False
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                framed = True
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
            elif name == b"transfer-encoding":
                framed = True
        if not framed and scope["method"] in _NO_BODY_METHODS:
            # a GET without Content-Length or Transfer-Encoding has no body to count: skip
            # the two wrappers on the hot path (#8)
            await self.app(scope, receive, send)
            return
        seen = 0
        started = False
        complete = False
        timeout = self.read_timeout_s
        min_rate = self.min_rate
        now = asyncio.get_running_loop().time()
        deadline = None if timeout is None else now + timeout
        # the body must have reached seen bytes by rate_start + seen / min_rate
        rate_start = now + self.rate_grace_s
        why = ""

        async def limited_receive() -> Message:
            nonlocal seen, complete, why
            if complete or (deadline is None and not min_rate):
                message = await receive()
            else:
                # NOTE: only while the body is incomplete: once it is all here, receive()
                # waits for a disconnect, which may rightly take as long as the response.
                until = deadline
                if min_rate and (until is None or rate_start + seen / min_rate < until):
                    until = rate_start + seen / min_rate
                try:
                    async with asyncio.timeout_at(until):
                        message = await receive()
                except TimeoutError:
                    why = (f"request body not received within {timeout:g} s" if until == deadline
                           else f"request body arriving slower than {min_rate:g} bytes/s")
                    raise _BodyTimeout from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
                complete = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send)
        except _BodyTimeout:
            if not started:
                start, body = _json_error(408, "body", why, close=True)
                await send(start)
                await send({"type": "http.response.body", "body": body})

    async def _reject(self, send: Send) -> None:
        start, body = _json_error(413, "body", f"request body over {self.max_bytes} bytes")
        await send(start)
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class _BodyTimeout(Exception):
    """The body did not arrive in time (not a ``TimeoutError``: routes may catch those)."""


class MetricsMiddleware:
    """Count requests and time them by route *template* (never the raw path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._templates: dict[tuple[str, str, str], str] = {}

    def _template(self, scope: Scope) -> str:
        # NOTE: memoized per (method, root_path, path): matching every route again for the
        # label cost more than the rest of this middleware (#8). Bounded: paths carry ids.
        key = (scope.get("method", ""), scope.get("root_path", ""), scope.get("path", ""))
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= _TEMPLATE_MEMO_MAX:
                self._templates.clear()
            template = self._templates[key] = self._match(scope)
        return template

    def _match(self, scope: Scope) -> str:
        router = scope.get("app")
        routes = getattr(getattr(router, "router", None), "routes", None) or []
        for route in routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "other")
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # NOTE: the client went away while its body was read: nothing to answer and
            # nothing broken here, so no traceback and no 5xx (it would page someone) (#18)
            if not started:
                status = CLIENT_CLOSED
            log.debug("client disconnected during %s %s", scope.get("method"),
                      scope.get("path"))
        finally:
            route = self._template(scope)
            metrics.child(metrics.REQUESTS, route, str(status)).inc()
            metrics.child(metrics.REQUEST_LATENCY, route).observe(time.perf_counter() - start)
