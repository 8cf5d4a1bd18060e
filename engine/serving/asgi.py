"""ASGI entry point for uvicorn workers (settings from the environment, read once), and the
uvicorn protocol classes that answer an unparseable request with rankly's JSON error and
bound the time a request's head may take."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from typing import Any

from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .. import metrics
from ..config import ConfigError, load_settings
from ..plugins import PluginError
from .app import create_app

#: The route label of requests the HTTP parser refused before any route could see them.
MALFORMED_ROUTE = "malformed"
#: The route label of connections closed because a request's head did not arrive in time.
INCOMPLETE_ROUTE = "incomplete"


def create_app_from_env() -> OneLineStartupErrors:
    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return OneLineStartupErrors(create_app(settings))


class OneLineStartupErrors:
    """The app as uvicorn runs it: a start that fails on the settings or a plugin (a
    configured component whose factory raises: ``ComponentError``) is logged as one line
    naming it, as the other configuration errors of `rankly serve` are, instead of Starlette's
    traceback of the lifespan. uvicorn still ends with its "startup failed" status (3)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_one_line(message: Any) -> None:
            # NOTE: Starlette sends this from the ``except`` block of its lifespan, so the
            # exception it formatted is the one being handled here
            error = sys.exc_info()[1]
            if message["type"] == "lifespan.startup.failed" \
                    and isinstance(error, ConfigError | PluginError):
                message = {**message, "message": f"rankly serve: {error}"}
            await send(message)

        await self.app(scope, receive, send_one_line)


def _malformed(msg: str) -> bytes:
    metrics.child(metrics.REQUESTS, MALFORMED_ROUTE, "400").inc()
    return json.dumps({"error": {"field": "request", "message": msg}}).encode()


@functools.cache
def head_timeout_s() -> float | None:
    """``deadlines.body_read_ms`` of this worker's settings, in seconds (None: no timeout)."""
    ms = load_settings().deadlines.body_read_ms
    return ms / 1000.0 if ms > 0 else None


def _response(status: bytes, body: bytes, default_headers: Any) -> bytes:
    return b"".join([
        b"HTTP/1.1 " + status + b"\r\n",
        *(name + b": " + value + b"\r\n" for name, value in default_headers),
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
        b"connection: close\r\n\r\n", body])


class _HeadTimeout:
    """The request-head timer both protocol classes share: armed when a connection opens
    and when a request's first byte arrives, cancelled when its head is complete; on expiry
    a JSON 408 and the connection is closed (unless a request is being answered: its body
    has the app's own timeout)."""

    _head_timer: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any
    server_state: Any

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        timeout = head_timeout_s()
        if timeout is not None:
            self._head_timer = self.loop.call_later(timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return
        metrics.child(metrics.REQUESTS, INCOMPLETE_ROUTE, "408").inc()
        body = json.dumps({"error": {"field": "request", "message": (
            f"request head not received within {head_timeout_s():g} s")}}).encode()
        self.transport.write(_response(b"408 Request Timeout", body,
                                       self.server_state.default_headers))
        self.transport.close()


class _NoWebSocket:
    """rankly has no WebSocket route: a request that asks to upgrade to one is answered as
    the plain HTTP request it also is (RFC 9110 lets a server ignore ``Upgrade``).

    NOTE: uvicorn handed such a request (``GET /health`` with ``Upgrade: websocket``) to the
    app as a websocket scope, which the router refused with a bare 403 and no JSON error.
    """

    def _should_upgrade_to_ws(self) -> bool:
        return False

    def _unsupported_upgrade_warning(self) -> None:
        """Not uvicorn's warning, which blames a missing WebSocket library."""


class JSONHttpToolsProtocol(_NoWebSocket, _HeadTimeout, HttpToolsProtocol):
    """uvicorn's httptools protocol; a request httptools cannot parse gets the JSON error,
    and a request head (request line and headers) that is not complete within
    ``deadlines.body_read_ms`` of the connection or of its first byte gets a JSON 408 and
    the connection is closed.

    NOTE: uvicorn answers unparseable requests itself with text/plain, before the app exists
    for the request, and has no timeout for a request's head: a client that sends a header
    byte every few seconds held its connection for ever (#18). What is refused as
    unparseable, and that the connection is closed after it, stay uvicorn's.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._cancel_head_timer()
        self.transport.write(_response(b"400 Bad Request", _malformed(msg),
                                       self.server_state.default_headers))
        self.transport.close()
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return
        if self.parser.should_upgrade() and self._should_upgrade():
            return
        cycle.more_body = False
        cycle.message_event.set()


class JSONH11Protocol(_NoWebSocket, _HeadTimeout, H11Protocol):
    """uvicorn's h11 protocol (the fallback without httptools) with the same two answers:
    the JSON 400 for a request h11 cannot parse, and the JSON 408 for a head that is not
    complete in time.

    NOTE: h11 has no message-begin callback: a request begins with the first byte that
    arrives while h11 waits for a request (``their_state`` IDLE) with nothing buffered, or
    with part of a pipelined head buffered and no timer running; its head is complete once
    h11 has left IDLE after parsing. What is refused as
    unparseable (h11 bounds a head's size, ``h11_max_incomplete_event_size``) stays h11's.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        import h11

        if self.conn.their_state is h11.IDLE and (not self.conn.trailing_data[0]
                                                  or self._head_timer is None):
            self._arm_head_timer()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        import h11

        self._cancel_head_timer()
        body = _malformed(msg)
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode("ascii"))]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


#: ``uvicorn.run(http=...)`` values by parser name (import strings, so workers load them).
HTTP_PROTOCOLS = {"httptools": "rankly.engine.serving.asgi:JSONHttpToolsProtocol",
                  "h11": "rankly.engine.serving.asgi:JSONH11Protocol"}
