"""Slowloris-style clients do not hold connections for ever or stop normal requests.

``SLOW_CLIENTS`` connections, half sending a request head and half a request body one byte
every ``DRIP_S`` seconds, for ``LOADED_S`` seconds; each reconnects when the server closes it.
Meanwhile this process measures /recommendations at ``REC_RATE`` req/s; the same rate measured
before them is the unloaded baseline. The server runs with ``deadlines.body_read_ms`` =
``READ_MS``: a head or a body not complete by then gets a JSON 408 and its connection is
closed. The slow clients run in their own niced process. The test asserts the
functional promises (every normal request answered 200, every slow connection answered 408
and closed); the RELIABILITY line reports the latencies.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time

import httpx
import pytest
from procs import paced_load, percentile, summary_ms

from rankly.engine.serving.dashboard import histogram_quantile

pytestmark = pytest.mark.slow

SLOW_CLIENTS = 200
DRIP_S = 2.0
READ_MS = 3000
TOKEN = "slow-clients-admin-token-0123456789"
REC_RATE = 100
UNLOADED_S = 8.0
LOADED_S = 12.0


async def slow_client(port: int, kind: str, until: float, counts: dict[str, int],
                      delay: float = 0.0) -> None:
    """Drip a head (``kind="head"``) or a body byte by byte; count the server's answers.
    ``delay`` staggers the first connection (independent clients are not in step)."""
    await asyncio.sleep(delay)
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            counts["connect_errors"] += 1
            await asyncio.sleep(DRIP_S)
            continue
        counts["connections"] += 1
        if kind == "head":
            writer.write(b"GET /recommendations?user_id=1 HTTP/1.1\r\nX-Slow: ")
        else:
            # NOTE: not /events: there a slow body holds one of the 64 ingest slots until its
            # 408 (after deadlines.body_rate_grace_ms), so 64 slow clients make other event
            # posts 429 meanwhile (README, gaps),
            # and not /recommendations either, so that route's server-side histogram holds
            # only the measured requests
            writer.write(b"PUT /experiments/slow HTTP/1.1\r\nHost: x\r\nX-API-Key: "
                         + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 10000\r\n\r\n{")
        try:
            while time.monotonic() < until:
                try:
                    async with asyncio.timeout(DRIP_S):
                        data = await reader.read(65536)
                except TimeoutError:
                    writer.write(b"a")  # one more byte, still incomplete
                    continue
                if data.startswith(b"HTTP/1.1 408 "):
                    counts[f"{kind}_408"] += 1
                elif data:
                    counts[f"{kind}_other"] += 1
                rest = await reader.read()  # the server closes the connection after it
                if not data and not rest:
                    counts[f"{kind}_closed_silently"] += 1
                break
        except OSError:
            counts[f"{kind}_reset"] += 1
        finally:
            writer.close()


async def slow_clients(port: int, duration: float) -> dict[str, int]:
    counts = dict.fromkeys(COUNTS, 0)
    until = time.monotonic() + duration
    await asyncio.gather(*(slow_client(port, "head" if i % 2 else "body", until, counts,
                                       delay=i * READ_MS / 1000 / SLOW_CLIENTS)
                           for i in range(SLOW_CLIENTS)))
    return counts


COUNTS = ("connections", "connect_errors", "head_408", "body_408", "head_other", "body_other",
          "head_closed_silently", "body_closed_silently", "head_reset", "body_reset")


def run_slow_clients(port: int, duration: float) -> subprocess.Popen:
    """The slow clients in their own process, niced (real ones come from other machines:
    here their CPU would count as the server's slowdown); it prints its counts as JSON."""
    return subprocess.Popen(["nice", "-n", "10", sys.executable, __file__, str(port),
                             str(duration)], stdout=subprocess.PIPE, text=True)


def server_p99_ms(url: str, before: dict[float, float]) -> tuple[float | None, dict]:
    """Server-side P99 (ms) of /recommendations since the cumulative buckets ``before``."""
    text = httpx.get(url + "/metrics").text
    now = {float(m.group(1)): float(m.group(2)) for m in re.finditer(
        r'rankly_http_request_duration_seconds_bucket\{le="([^"]+)",route="/recommendations"\}'
        r" (\S+)", text)}
    p99 = histogram_quantile(0.99, {le: now[le] - before.get(le, 0.0) for le in now})
    return (None if p99 is None else round(p99 * 1000, 2)), now


def test_slow_heads_and_bodies_get_408_and_spare_recommendations(server_factory):
    server = server_factory(env={"RANKLY_DEADLINES__BODY_READ_MS": str(READ_MS),
                                 "RANKLY_ADMIN_TOKEN": TOKEN})
    port = int(server.url.rsplit(":", 1)[1])
    asyncio.run(paced_load(server.url, rate=REC_RATE, duration=2.0))  # warm the caches
    _, buckets = server_p99_ms(server.url, {})
    unloaded = asyncio.run(paced_load(server.url, rate=REC_RATE, duration=UNLOADED_S))
    server_unloaded, buckets = server_p99_ms(server.url, buckets)
    rss = [server.rss_kb()]
    slow = run_slow_clients(port, LOADED_S + 2.0)
    try:
        time.sleep(READ_MS / 1000)  # every slow connection is open
        loaded = asyncio.run(paced_load(server.url, rate=REC_RATE, duration=LOADED_S - 2.0))
        server_loaded, _ = server_p99_ms(server.url, buckets)
        rss.append(server.rss_kb())
        out, _ = slow.communicate(timeout=LOADED_S + 30)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait()
    counts = json.loads(out)
    metrics = httpx.get(server.url + "/metrics").text
    p99_unloaded = percentile([s.latency for s in unloaded], 99)
    p99_loaded = percentile([s.latency for s in loaded], 99)
    print("\nRELIABILITY slow_clients " + json.dumps({
        "slow_clients": SLOW_CLIENTS, "drip_s": DRIP_S, "read_ms": READ_MS, **counts,
        "unloaded_ms": summary_ms([s.latency for s in unloaded]),
        "loaded_ms": summary_ms([s.latency for s in loaded]),
        "p99_ratio": round(p99_loaded / p99_unloaded, 2),
        "server_p99_ms": [server_unloaded, server_loaded], "rss_kb": rss,
    }))
    assert {s.status for s in unloaded} == {200}
    assert {s.status for s in loaded} == {200}, [s.error for s in loaded if s.status != 200][:5]
    # every slow connection was answered 408 and closed, and reconnected: more than one each
    assert counts["head_408"] >= SLOW_CLIENTS // 2 and counts["body_408"] >= SLOW_CLIENTS // 2
    assert counts["connections"] > SLOW_CLIENTS
    for key in ("head_other", "body_other", "head_closed_silently", "body_closed_silently",
                "connect_errors"):
        assert counts[key] == 0, counts
    assert 'route="incomplete",status="408"' in metrics
    assert 'route="/experiments/{key}",status="408"' in metrics


if __name__ == "__main__":
    print(json.dumps(asyncio.run(slow_clients(int(sys.argv[1]), float(sys.argv[2])))))
