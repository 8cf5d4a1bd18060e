"""ASGI entry point for uvicorn workers (settings from the environment, read once), and the
uvicorn protocol classes that answer an unparseable request with rankly's JSON error."""

from __future__ import annotations

import json
import logging

from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from rankly.engine import metrics
from rankly.engine.app import create_app
from rankly.engine.config import load_settings

#: The route label of requests the HTTP parser refused before any route could see them.
MALFORMED_ROUTE = "malformed"


def create_app_from_env() -> Starlette:
    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(settings)


def _malformed(msg: str) -> bytes:
    metrics.child(metrics.REQUESTS, MALFORMED_ROUTE, "400").inc()
    return json.dumps({"error": {"field": "request", "message": msg}}).encode()


class JSONHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; a request httptools cannot parse gets the JSON error.

    NOTE: uvicorn answers those itself with text/plain, before the app exists for the
    request (#18). Only the answer's body and type change here; what is refused, and that
    the connection is closed after it, stay uvicorn's.
    """

    def send_400_response(self, msg: str) -> None:
        body = _malformed(msg)
        self.transport.write(b"".join([
            b"HTTP/1.1 400 Bad Request\r\n",
            *(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers),
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n", body]))
        self.transport.close()
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return
        if self.parser.should_upgrade() and self._should_upgrade():
            return
        cycle.more_body = False
        cycle.message_event.set()


class JSONH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the JSON answer to an unparseable request."""

    def send_400_response(self, msg: str) -> None:
        import h11

        body = _malformed(msg)
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode("ascii"))]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


#: ``uvicorn.run(http=...)`` values by parser name (import strings, so workers load them).
HTTP_PROTOCOLS = {"httptools": "rankly.engine.asgi:JSONHttpToolsProtocol",
                  "h11": "rankly.engine.asgi:JSONH11Protocol"}
