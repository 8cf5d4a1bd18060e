"""Hostile and broken HTTP clients against a real ``rankly serve`` on 127.0.0.1 (raw sockets).

A client that disconnects mid-body is counted as 499, never 5xx, and leaves no traceback; a
body that does not arrive within ``deadlines.body_read_ms`` gets a JSON 408 and the
connection is closed. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.engine.serving.test_multiworker_metrics import free_port, sample, stop, wait_ready

pytestmark = pytest.mark.slow

BODY_READ_MS = 1500


def serve(artifacts: Path, tmp_path_factory: pytest.TempPathFactory, http: str,
          **deadlines: float):
    """One worker, body read timeout 1.5 s and no minimum body rate unless ``deadlines``
    say otherwise; its stderr goes to a file the tests read."""
    tmp = tmp_path_factory.mktemp("hardening-http")
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RANKLY_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env["RANKLY_DEADLINES__BODY_READ_MS"] = str(BODY_READ_MS)
    env["RANKLY_DEADLINES__BODY_MIN_RATE"] = "0"
    for name, value in deadlines.items():
        env[f"RANKLY_DEADLINES__{name.upper()}"] = str(value)
    log = (tmp / "stderr.log").open("w+b")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rankly.engine.cli", "serve", "--artifacts", str(artifacts),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--http", http],
        env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, cwd=tmp,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url, port, tmp / "stderr.log"
    finally:
        stop(proc)
        log.close()


@pytest.fixture(scope="module")
def server(artifacts: Path, tmp_path_factory: pytest.TempPathFactory):
    """The default parser (httptools when installed)."""
    yield from serve(artifacts, tmp_path_factory, "auto")


@pytest.fixture(scope="module")
def h11_server(artifacts: Path, tmp_path_factory: pytest.TempPathFactory):
    """The h11 fallback, which serves when httptools is not installed."""
    yield from serve(artifacts, tmp_path_factory, "h11")


@pytest.fixture(scope="module")
def rate_server(artifacts: Path, tmp_path_factory: pytest.TempPathFactory):
    """A long body read timeout, and a minimum body rate after a short grace."""
    yield from serve(artifacts, tmp_path_factory, "auto", body_read_ms=20_000,
                     body_min_rate=240, body_rate_grace_ms=RATE_GRACE_MS)


RATE_GRACE_MS = 500

#: The tests of what the HTTP parser's protocol class does run on both parsers.
PARSERS = pytest.mark.parametrize("parser", ["server", "h11_server"])


def raw(port: int, head: str, body: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    return s


def read_all(s: socket.socket, limit_s: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (bounded)."""
    s.settimeout(limit_s)
    chunks = []
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        data = s.recv(65536)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def requests_by_status(url: str, route: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=5).text
    return {labels["status"]: v for labels, v in
            sample(text, "rankly_http_requests_total", route=route)}


@pytest.mark.parametrize("route", ["/recommendations", "/events"])
def test_a_client_gone_mid_body_is_counted_499_not_500_and_logs_no_traceback(server, route):
    url, port, stderr = server
    before = requests_by_status(url, route).get("499", 0.0)
    for _ in range(3):
        s = raw(port, f"POST {route} HTTP/1.1\nHost: x\nContent-Type: application/json\n"
                      "Content-Length: 100\n", b'{"user_id": "1"')  # 15 of 100 bytes
        s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        counts = requests_by_status(url, route)
        if counts.get("499", 0.0) >= before + 3:
            break
        time.sleep(0.1)
    assert counts.get("499", 0.0) == before + 3, counts
    assert not any(status.startswith("5") for status in counts), counts
    log = stderr.read_text(errors="replace")
    assert "Traceback" not in log and "ClientDisconnect" not in log, log[-2000:]
    # the server still answers normally
    assert httpx.get(url + "/recommendations", params={"user_id": "1"}).status_code == 200


@pytest.mark.parametrize("route", ["/recommendations", "/events"])
def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(server, route):
    url, port, _ = server
    s = raw(port, f"POST {route} HTTP/1.1\nHost: x\nContent-Type: application/json\n"
                  "Content-Length: 100\n", b'{"user_id": ')
    try:
        t0 = time.monotonic()
        reply = read_all(s, limit_s=BODY_READ_MS / 1000 + 8)  # ends only when the server closes
        waited = time.monotonic() - t0
    finally:
        s.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert b"content-type: application/json" in head.lower()
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["field"] == "body"
    assert waited >= BODY_READ_MS / 1000 * 0.9  # not before the configured timeout
    assert requests_by_status(url, route).get("408", 0.0) >= 1


def test_a_trickling_body_gets_408_after_the_grace_not_at_the_timeout(
        rate_server):
    url, port, _ = rate_server
    before = requests_by_status(url, "/events").get("408", 0.0)
    s = raw(port, "POST /events HTTP/1.1\nHost: x\nContent-Type: application/json\n"
                  "Content-Length: 5000\n", b'{"user_id": ')
    try:
        t0 = time.monotonic()
        for _ in range(8):  # a byte every half second: far below 240 bytes/s
            time.sleep(0.5)
            try:
                s.sendall(b" ")
            except OSError:
                break  # the server answered and closed
        reply = read_all(s, limit_s=10)
        waited = time.monotonic() - t0
    finally:
        s.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["field"] == "body" and "bytes/s" in error["message"], error
    assert RATE_GRACE_MS / 1000 * 0.9 <= waited < 10  # after the grace, not at the 20 s timeout
    assert requests_by_status(url, "/events").get("408", 0.0) == before + 1
    # a body at a normal pace, on the same server, is answered
    ok = httpx.post(url + "/events", json={"event_id": "after-trickle", "user_id": "1",
                                         "item_id": "1", "type": "click"})
    assert ok.status_code == 202, ok.text


def test_a_body_sent_slowly_but_within_the_timeout_is_answered(server):
    url, port, _ = server
    body = json.dumps({"user_id": "1", "n": 3}).encode()
    s = raw(port, "POST /recommendations HTTP/1.1\nHost: x\nContent-Type: application/json\n"
                  f"Content-Length: {len(body)}\nConnection: close\n")
    try:
        for i in range(0, len(body), 8):
            s.sendall(body[i:i + 8])
            time.sleep(0.05)
        reply = read_all(s)
    finally:
        s.close()
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), reply[:300]
    assert len(json.loads(payload)["items"]) == 3


@PARSERS
def test_a_request_the_http_parser_refuses_gets_a_json_400(request, parser):
    url, port, _ = request.getfixturevalue(parser)
    # too long: httptools refuses a long request line; h11 bounds what it buffers of a head
    # not yet complete (a complete head that arrives in one read is parsed at any size)
    too_long = {"server": "GET /recommendations?user_id=" + "0" * 100_000 + " HTTP/1.1\n"
                          "Host: x\n",
                "h11_server": "GET /health HTTP/1.1\nHost: x\nX-Long: " + "a" * 100_000}
    for head in (too_long[parser], "GET /health HTTP/1.1\nHost: x\nBad Header\n",
                 "NOT-HTTP\n"):
        s = raw(port, head)
        try:
            reply = read_all(s)
        finally:
            s.close()
        head_bytes, _, body = reply.partition(b"\r\n\r\n")
        assert head_bytes.startswith(b"HTTP/1.1 400 "), reply[:200]
        assert b"content-type: application/json" in head_bytes.lower()
        assert json.loads(body)["error"]["field"] == "request"
    assert requests_by_status(url, "malformed").get("400", 0.0) >= 3


@PARSERS
@pytest.mark.parametrize("partial", [b"", b"GET /recommendations?user_id=1 HTTP/1.1\r\nHo"])
def test_a_request_head_that_does_not_arrive_in_time_gets_408_and_is_closed(request, parser,
                                                                            partial):
    url, port, _ = request.getfixturevalue(parser)
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(partial)
        t0 = time.monotonic()
        for _ in range(2):  # a byte of a header name now and then does not keep it open
            time.sleep(BODY_READ_MS / 1000 / 3)
            if partial:
                s.sendall(b"s")
        reply = read_all(s, limit_s=BODY_READ_MS / 1000 + 8)
        waited = time.monotonic() - t0
    finally:
        s.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert json.loads(body)["error"]["field"] == "request"
    assert waited >= BODY_READ_MS / 1000 * 0.9
    assert requests_by_status(url, "incomplete").get("408", 0.0) >= 1


@PARSERS
def test_keep_alive_requests_are_not_cut_by_the_head_timeout(request, parser):
    url, port, _ = request.getfixturevalue(parser)
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        for _ in range(3):  # idle less than the keep-alive timeout between requests
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while not data.endswith(b'{"status":"ok"}'):
                chunk = s.recv(65536)
                assert chunk, data  # the server closed the connection
                data += chunk
            assert data.startswith(b"HTTP/1.1 200 "), data
            time.sleep(BODY_READ_MS / 1000 * 0.8)
    finally:
        s.close()


@PARSERS
def test_a_pipelined_head_left_incomplete_gets_408_after_the_answer(request, parser):
    url, port, _ = request.getfixturevalue(parser)
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHo")
        for _ in range(2):  # a byte now and then does not keep the second head open
            time.sleep(BODY_READ_MS / 1000 / 3)
            s.sendall(b"s")
        reply = read_all(s, limit_s=BODY_READ_MS / 1000 + 8)
    finally:
        s.close()
    first, _, rest = reply.partition(b'{"status":"ok"}')
    assert first.startswith(b"HTTP/1.1 200 "), reply[:300]
    head, _, body = rest.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), reply[:300]
    assert json.loads(body)["error"]["field"] == "request"


@PARSERS
def test_a_websocket_upgrade_is_answered_as_plain_http(request, parser):
    # no WebSocket route: the router refused the websocket scope with a bare 403, no JSON
    url, port, log = request.getfixturevalue(parser)
    for path, status in (("/health", b"200"), ("/nowhere", b"404")):
        s = raw(port, f"GET {path} HTTP/1.1\nHost: x\nConnection: Upgrade, close\n"
                      "Upgrade: websocket\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n"
                      "Sec-WebSocket-Version: 13\n")
        try:
            reply = read_all(s)
        finally:
            s.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status), reply[:300]
        assert b"content-type: application/json" in head.lower()
        json.loads(body)
    assert "WebSocket" not in log.read_text()
