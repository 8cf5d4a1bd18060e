r"""Benchmarks of event admission (one ``POST /events`` refused or accepted, in process) and of
revalidation (``pipeline.rank`` on a clean, a dirty and a missing L1 entry).

Run (about 10 s; trains the 200-user / 300-item model of ``tests/conftest.py`` first):

    OPENBLAS_NUM_THREADS=1 python -m pytest benchmarks/test_events.py \
        --benchmark-json benchmarks/results/events.json -q

then print the table benchmarks/README.md quotes:

    python benchmarks/test_events.py benchmarks/results/events.json

Groups: ``event_admission`` times one post of 50 events (refused before its body is read,
refused after parsing it, accepted with its fsynced append) straight into the ASGI app, no
HTTP server; ``revalidation`` times one known user's request when the L1 holds a clean entry,
a dirty one (the user bought an item on it since), or nothing; ``loop_floor`` is what the
harness adds to each of them (one ``run_until_complete``). Everything runs on one persistent
event loop, as in a worker: uvloop when installed, as ``rankly serve`` runs
(``RANKLY_BENCH_LOOP=asyncio`` for the standard library's loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import pytest
from starlette.applications import Starlette

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pytest's importlib mode: no rootdir
import pipeline_fixtures as fx  # noqa: E402

from rankly.engine import pipeline  # noqa: E402
from rankly.engine.config import Settings  # noqa: E402
from rankly.engine.events.routes import EXTRAS_KEY  # noqa: E402
from rankly.engine.model import Model  # noqa: E402
from rankly.engine.pipeline import cache as caching  # noqa: E402
from rankly.engine.runtime import Runtime  # noqa: E402
from rankly.engine.serving.app import create_app  # noqa: E402
from rankly.engine.types import RecommendationRequest  # noqa: E402

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # serve single-threaded, as workers do

ROOT = Path(__file__).resolve().parents[1]
#: The event loop every benchmark runs on: what `rankly serve` picks, unless told otherwise.
LOOP = os.environ.get("RANKLY_BENCH_LOOP") or ("uvloop" if importlib.util.find_spec("uvloop")
                                               else "asyncio")
BATCH = 50
PIPELINE = {"candidates": ["itemknn", "trending", "popular"], "scorers": ["itemknn", "popular"]}
#: No event admission limit: every valid post is appended (fsynced) and answered 202.
UNLIMITED = {"events_global_per_second": 0, "events_max_inflight": 0}
HIT_ROUNDS = 5000
MISS_ROUNDS = 500
REFUSED_ROUNDS = 3000
ACCEPTED_ROUNDS = 500
#: Each group's cases, its baseline first (the order of the README table).
CASES = {"event_admission": ("test_refused_unread", "test_refused_after_parse", "test_accepted"),
         "revalidation": ("test_clean_hit", "test_dirty_hit", "test_miss"),
         "loop_floor": ("test_loop_floor",)}


def _load(relpath: str, name: str) -> ModuleType:
    """A helper module of the test suite, loaded by path (tests/ is not importable here)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


_tests = _load("tests/conftest.py", "_rankly_tests_conftest")
_procs = _load("tests/reliability/procs.py", "_rankly_reliability_procs")


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # NOTE: the loop `rankly serve` runs (engine/cli.py: uvloop when installed);
    # RANKLY_BENCH_LOOP=asyncio measures the standard library's loop instead.
    if LOOP == "uvloop":
        import uvloop

        lp = uvloop.new_event_loop()
    else:
        lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reliability tests' model: users "1".."200", items "1".."300", pop + itemknn."""
    return _tests.build_artifacts(tmp_path_factory.mktemp("events-bench") / "v1", version="v1")


@pytest.fixture(scope="module")
def model(artifacts: Path) -> Model:
    return fx.load(artifacts)


@pytest.fixture(autouse=True)
def _record_loop(benchmark) -> None:
    benchmark.extra_info["loop"] = LOOP


def _settings(artifacts: Path, data_dir: Path, **overrides: Any) -> Settings:
    return fx.settings_for(artifacts, data_dir=data_dir, pipeline=PIPELINE, **overrides)


# --- event admission ------------------------------------------------------------------------


class Answer(NamedTuple):
    status: int
    reads: int  # receive() calls: 0 means the body was never read
    body: bytes


@contextlib.contextmanager
def _serving(loop: asyncio.AbstractEventLoop,
             settings: Settings) -> Iterator[tuple[Starlette, dict[str, Any]]]:
    """The app with its lifespan entered on ``loop``, and the state a server would copy into
    every request's scope."""
    app = create_app(settings)
    lifespan = app.router.lifespan_context(app)
    state = loop.run_until_complete(lifespan.__aenter__())
    try:
        yield app, state
    finally:
        loop.run_until_complete(lifespan.__aexit__(None, None, None))


@pytest.fixture
def limited(loop, artifacts, tmp_path) -> Iterator[tuple[Starlette, dict[str, Any]]]:
    with _serving(loop, _settings(artifacts, tmp_path / "data")) as served:
        yield served


@pytest.fixture
def unlimited(loop, artifacts, tmp_path) -> Iterator[tuple[Starlette, dict[str, Any]]]:
    with _serving(loop, _settings(artifacts, tmp_path / "data", rate_limits=UNLIMITED)) as served:
        yield served


def _flood_bodies() -> Iterator[bytes]:
    """50-event bodies as ``flood_events`` in tests/reliability/procs.py builds them: event
    ids unique across calls, its KINDS mix, user ``seq % 200 + 1``, item ``seq % 300 + 1``."""
    seq = itertools.count(1)
    kinds = _procs.KINDS
    while True:
        events = []
        for s in itertools.islice(seq, BATCH):
            events.append({"event_id": f"flood-{s}", "type": kinds[s % len(kinds)],
                           "user_id": str(s % _procs.USERS + 1),
                           "item_id": str(s % _procs.ITEMS + 1)})
        yield json.dumps(events).encode()


async def _post_events(app: Starlette, state: dict[str, Any], body: bytes, *,
                       length: bool) -> Answer:
    """``POST /events`` straight into the ASGI app, as a server would pass it on."""
    headers = [(b"host", b"bench"), (b"content-type", b"application/json")]
    # NOTE: an HTTP/1.1 client that sends no length sends the body chunked; the app then
    # cannot know how many events the body holds before reading it
    headers.append((b"content-length", str(len(body)).encode()) if length
                   else (b"transfer-encoding", b"chunked"))
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
             "http_version": "1.1", "method": "POST", "scheme": "http", "path": "/events",
             "raw_path": b"/events", "root_path": "", "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
             "state": dict(state)}
    reads = 0
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if reads == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return Answer(status, reads, b"".join(chunks))


def _starve(state: dict[str, Any], tokens: float) -> None:
    """Leave ``tokens`` in the worker's event admission bucket and stop its clock, so it never
    refills and every timed post meets the same bucket."""
    admission = state["runtime"].extras[EXTRAS_KEY].admission
    now = admission.clock()
    admission.clock = lambda: now
    admission.bucket.tokens = tokens
    admission.bucket.updated = now


def _next_body(bodies: Iterator[bytes]) -> Callable[[], tuple[tuple[bytes], dict[str, Any]]]:
    """A pedantic ``setup``: the next body, built outside the timed call."""
    return lambda: ((next(bodies),), {})


@pytest.mark.benchmark(group="event_admission")
def test_refused_unread(benchmark, loop, limited):
    """Empty bucket, Content-Length sent: 429 before the body is read."""
    app, state = limited
    _starve(state, 0.0)

    def post(body: bytes) -> None:
        answer = loop.run_until_complete(_post_events(app, state, body, length=True))
        assert answer.status == 429 and answer.reads == 0, answer

    benchmark.pedantic(post, setup=_next_body(_flood_bodies()), rounds=REFUSED_ROUNDS,
                       warmup_rounds=50)


@pytest.mark.benchmark(group="event_admission")
def test_refused_after_parse(benchmark, loop, limited):
    """10 tokens, no Content-Length: enter() needs 1 token, so the body is read and parsed,
    then charge(50) refuses it whole (and takes nothing: the bucket keeps its 10)."""
    app, state = limited
    _starve(state, 10.0)

    def post(body: bytes) -> None:
        answer = loop.run_until_complete(_post_events(app, state, body, length=False))
        assert answer.status == 429 and answer.reads == 1, answer

    benchmark.pedantic(post, setup=_next_body(_flood_bodies()), rounds=REFUSED_ROUNDS,
                       warmup_rounds=50)
    assert state["runtime"].extras[EXTRAS_KEY].admission.tokens == 10.0


@pytest.mark.benchmark(group="event_admission")
def test_accepted(benchmark, loop, unlimited, tmp_path):
    """No admission limit: parsed, appended to the file log and fsynced, projected, the
    purchasers' cached answers invalidated; 202."""
    app, state = unlimited
    last: list[Answer] = []

    def post(body: bytes) -> None:
        answer = loop.run_until_complete(_post_events(app, state, body, length=True))
        assert answer.status == 202, answer
        last[:] = [answer]

    benchmark.pedantic(post, setup=_next_body(_flood_bodies()), rounds=ACCEPTED_ROUNDS,
                       warmup_rounds=10)
    assert json.loads(last[0].body) == {"accepted": BATCH, "duplicates": 0, "rejected": []}
    with open(tmp_path / "data" / "events" / "events.jsonl", "rb") as fh:
        assert sum(1 for _ in fh) == (ACCEPTED_ROUNDS + 10) * BATCH


# --- revalidation ---------------------------------------------------------------------------


class Ranked(NamedTuple):
    rt: Runtime
    req: RecommendationRequest
    plan: pipeline.Plan
    key: str
    first: dict[str, Any]


async def _subscribed(rt: Runtime) -> None:
    """Start the L1's invalidation follower and wait for it: it clears the L1 once when it
    subscribes, which must not happen to a cached entry in the middle of a benchmark."""
    l1 = rt.caches[0][1]
    await l1.get("", None)
    async with asyncio.timeout(5):
        await l1.following.wait()


async def _clear(rt: Runtime) -> None:
    for _, cache in rt.caches:
        await cache.clear()


@pytest.fixture
def ranked(loop, artifacts, model, tmp_path) -> Iterator[Ranked]:
    """A runtime whose L1 holds one known user's answer (computed by a miss)."""
    rt = fx.runtime_for(model, _settings(artifacts, tmp_path / "data"))
    loop.run_until_complete(_subscribed(rt))
    req = RecommendationRequest(user_id=str(model.users.user_ids[0]), n=10, request_id="b")
    plan = pipeline.default_plan(rt)
    first = loop.run_until_complete(pipeline.rank(rt, req, plan))
    assert first["cached"] is False and len(first["items"]) == 10
    key = pipeline.cache_key(req, plan, rt.components.model.version)
    assert key in rt.caches[0][1]._data
    try:
        yield Ranked(rt, req, plan, key, first)
    finally:
        for _, cache in rt.caches:
            loop.run_until_complete(cache.close())


@pytest.mark.benchmark(group="revalidation")
def test_clean_hit(benchmark, loop, ranked):
    rt, req, plan, _, first = ranked

    def rank() -> None:
        out = loop.run_until_complete(pipeline.rank(rt, req, plan))
        assert out["cached"] is True and out["items"] == first["items"], out

    benchmark.pedantic(rank, rounds=HIT_ROUNDS, warmup_rounds=50)


@pytest.mark.benchmark(group="revalidation")
def test_dirty_hit(benchmark, loop, ranked, monkeypatch):
    """The user bought the slate's first item after it was cached: the dirty entry is served
    without it, topped up from its spare items (one store read, no computation)."""
    rt, req, plan, key, first = ranked
    l1 = rt.caches[0][1]
    bought = first["items"][0]["item_id"]
    loop.run_until_complete(rt.store.record_interaction(req.user_id, bought, seen=True))
    # NOTE: the recomputation a dirty hit starts behind it would run on this loop during the
    # next timed calls, and its set() would clear the mark. It costs what test_miss times, but
    # off the request path, so it is counted here, not run.
    refreshes: list[str] = []
    monkeypatch.setattr(caching, "refresh_behind", lambda rt, key, fn: refreshes.append(key))

    def rank() -> None:
        out = loop.run_until_complete(pipeline.rank(rt, req, plan))
        items = [it["item_id"] for it in out["items"]]
        assert out["cached"] is True and len(items) == 10 and bought not in items, out

    benchmark.pedantic(rank, setup=lambda: l1._dirty.add(key), rounds=HIT_ROUNDS,
                       warmup_rounds=50)
    assert refreshes == [key] * (HIT_ROUNDS + 50)


@pytest.mark.benchmark(group="revalidation")
def test_miss(benchmark, loop, ranked):
    rt, req, plan, _, _ = ranked

    def rank() -> None:
        out = loop.run_until_complete(pipeline.rank(rt, req, plan))
        assert out["cached"] is False and out["fallback"] is None, out

    benchmark.pedantic(rank, setup=lambda: loop.run_until_complete(_clear(rt)),
                       rounds=MISS_ROUNDS, warmup_rounds=10)


async def _nothing() -> None:
    return None


@pytest.mark.benchmark(group="loop_floor")
def test_loop_floor(benchmark, loop):
    """What the harness adds to every case above: one run_until_complete of a bare coroutine."""
    benchmark.pedantic(lambda: loop.run_until_complete(_nothing()), rounds=HIT_ROUNDS,
                       warmup_rounds=50)


def summarize(path: str) -> str:
    """The README table: median and min per case, each median over its group's first case
    (refused unread; clean hit), and the harness floor every case includes."""
    data = json.loads(Path(path).read_text())
    by_name = {b["name"]: b for b in data["benchmarks"]}
    rows = ["| group | case | loop | median us | min us | median / first |",
            "|---|---|---|---:|---:|---:|"]
    for group, names in CASES.items():
        first = by_name[names[0]]["stats"]["median"]
        for name in names:
            b = by_name[name]
            s = b["stats"]
            rows.append(f"| {group} | {name.removeprefix('test_')} | {b['extra_info']['loop']} | "
                        f"{s['median'] * 1e6:.1f} | {s['min'] * 1e6:.1f} | "
                        f"{s['median'] / first:.2f}x |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(summarize(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/events.json"))
