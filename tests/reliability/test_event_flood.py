"""An event flood at 5x the sustainable event rate does not take recommendations down.

Sustainable rate: 2,000 events/s on the embedded file log is what benchmarks/events_load.py
holds on this machine (benchmarks/README.md, "Events under load"). The flood offers 10,000
events/s (200 posts/s of 50 events, that benchmark's mix with 20% purchases) for ``FLOOD_S``
(30) seconds from a separate process, while this process measures /recommendations at a steady
rate and samples the server's RSS from /proc. The same rate is measured for 6 s before and
6 s after the flood: that is the unloaded baseline. The flood client runs niced (a real flood
comes from other machines; here its own CPU would count as the server's slowdown).

The server runs with its default server-wide event admission (``rate_limits.
events_global_per_second`` = ``SUSTAINABLE`` per worker): what it cannot take is refused with
429 + Retry-After, before the body is read when the bucket cannot hold the events the body can
carry. The purchases it accepts mark their users' cached answers dirty (``cache.invalidation =
"revalidate"``). The RELIABILITY line reports the posts and events answered 202/429, the
server's shed and revalidation counters, and the latencies.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from procs import paced_load, percentile, run_flood, summary_ms

pytestmark = pytest.mark.slow

SUSTAINABLE = 2000  # events/s, also the default rate_limits.events_global_per_second
FLOOD_S = 30.0
BATCH = 50
REC_RATE = 100  # /recommendations req/s, unloaded and under the flood
UNLOADED_S = 6.0  # unloaded measurement before the flood, and again after it


def test_event_flood_answers_202_429_503_and_spares_recommendations(server_factory):
    server = server_factory()
    asyncio.run(paced_load(server.url, rate=REC_RATE, duration=2.0))  # warm the caches
    # the unloaded baseline: 6 s before the flood and 6 s after it (one machine's drift over
    # the minute then weighs on both sides of the ratio)
    unloaded = asyncio.run(paced_load(server.url, rate=REC_RATE, duration=UNLOADED_S))
    rss = [server.rss_kb()]
    flood = run_flood(server.url, rate=5 * SUSTAINABLE, batch=BATCH, duration=FLOOD_S)
    try:
        time.sleep(1.0)  # measure while the flood is established

        async def measure():
            async def sample_rss():
                while flood.poll() is None:
                    rss.append(server.rss_kb())
                    await asyncio.sleep(0.5)
            sampler = asyncio.create_task(sample_rss())
            got = await paced_load(server.url, rate=REC_RATE, duration=FLOOD_S - 2.0)
            sampler.cancel()
            return got

        loaded = asyncio.run(measure())
        out, _ = flood.communicate(timeout=60)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    result = json.loads(out)
    time.sleep(1.0)  # the flood's last posts drain
    unloaded += asyncio.run(paced_load(server.url, rate=REC_RATE, duration=UNLOADED_S))
    rss.append(server.rss_kb())
    p99_unloaded = percentile([s.latency for s in unloaded], 99)
    p99_loaded = percentile([s.latency for s in loaded], 99)
    statuses = result["statuses"]
    shed = _shed_counters(server.url)
    stored = _stored_flood_events(server.data_dir)
    print("\nRELIABILITY event_flood " + json.dumps({
        "flood": result,
        "events": {"202": result["accepted"], "429": statuses.get("429", 0) * BATCH,
                   "503": statuses.get("503", 0) * BATCH, "in_log": stored},
        "server_shed": shed,
        "unloaded_ms": summary_ms([s.latency for s in unloaded]),
        "loaded_ms": summary_ms([s.latency for s in loaded]),
        "p99_ratio": round(p99_loaded / p99_unloaded, 2),
        # the flood's purchases invalidate cached answers; with cache.invalidation =
        # "revalidate" they are served minus the purchases while recomputing behind
        "revalidations": _counters(server.url, ("rankly_cache_revalidations_total{",)),
        "cached_share": [round(sum(bool(s.cached) for s in got) / len(got), 3)
                         for got in (unloaded, loaded)],
        "loaded_hits_ms": summary_ms([s.latency for s in loaded if s.cached]),
        "hits_p99_ratio": round(percentile([s.latency for s in loaded if s.cached] or [0.0], 99)
                                / p99_unloaded, 2),
        "loaded_misses_ms": summary_ms([s.latency for s in loaded if not s.cached]),
        "rec_statuses": sorted({s.status for s in loaded}),
        "rss_mb": [round(r / 1024, 1) for r in (rss[0], max(rss), rss[-1])]}))
    assert set(statuses) <= {"202", "429", "503"}
    # every acknowledged event is in the log, and nothing of a refused batch is (ids are unique)
    assert stored == result["accepted"]
    # the budget holds: no more than its rate over the flood (and its drain) plus one bucket
    assert result["accepted"] <= SUSTAINABLE * (FLOOD_S + 15) + SUSTAINABLE
    if result["offered_per_s"] > 2 * SUSTAINABLE:  # the flood client kept up: some refused
        assert statuses.get("429", 0) > 0
    assert {s.status for s in loaded} == {200}
    assert max(rss) - rss[0] < 200 * 1024, "memory grew by more than 200 MB"
    # goal: p99 <= 1.5x unloaded, reported (p99_ratio), not asserted: wall-time ratios swing
    # on this shared machine. The flood's purchases invalidate ~20% of the measured users'
    # answers; with cache.invalidation = "drop" those requests were fresh computations (2-4
    # ms against ~1 ms hits: 3.3-3.8x), revalidated they are hits. Asserted: none waited ~1 s
    assert max(s.latency for s in loaded) < 1.0


def _stored_flood_events(data_dir) -> int:
    """Client events of the flood in the server's file log (impressions are ``nd``)."""
    count = 0
    with open(data_dir / "events" / "events.jsonl", "rb") as fh:
        for line in fh:
            doc = json.loads(line)
            if not doc.get("nd") and doc["id"].startswith("flood-"):
                count += 1
    return count


def _shed_counters(url: str) -> dict[str, float]:
    """The server's admission counters (requests shed and events refused, by reason)."""
    return _counters(url, ("rankly_event_requests_shed_total{", "rankly_events_rejected_total{"))


def _counters(url: str, prefixes: tuple[str, ...]) -> dict[str, float]:
    """The server's counters whose lines start with one of ``prefixes``."""
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10.0).text.splitlines():
        if line.startswith(prefixes):
            name, value = line.rsplit(" ", 1)
            out[name.replace("rankly_", "").replace("_total", "")] = float(value)
    return out


def test_invalidations_during_a_store_outage_log_no_traceback_per_user(caplog):
    # Under load the Redis breaker opens; every purchase then failed to invalidate the L1/L2
    # caches, and formatting one traceback per user took ~25% of the event loop (py-spy, 1000
    # events/s), which made the Redis calls time out, which kept the breaker open.
    import logging
    from types import SimpleNamespace

    from rankly.engine.events.routes import EventsService
    from rankly.engine.storage.redis_client import CircuitOpen

    class DownCache:
        async def invalidate_user(self, user_id: str) -> None:
            raise CircuitOpen("redis circuit open")

    service = EventsService.__new__(EventsService)  # invalidate() only reads rt.caches
    service.rt = SimpleNamespace(caches=[("l1", DownCache()), ("l2", DownCache())])
    with caplog.at_level(logging.DEBUG, logger="rankly.events"):
        asyncio.run(service.invalidate({str(u) for u in range(1000)}))
    assert not any(r.exc_info for r in caplog.records)
    assert len(caplog.records) <= 2  # one line per tier and outage, not one per user
