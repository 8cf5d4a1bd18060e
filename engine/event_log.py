"""Durable, idempotent event logs: an fsynced JSON-lines file (embedded) and a Redis Stream.

An append returns only after its events are durably stored, so an acknowledged event is never
lost; an ``event_id`` seen within the idempotency window (default 24 h) is counted as a
duplicate and not stored again, so a retried request is never counted twice. Storage that
cannot be written raises :class:`StoreUnavailable` (the route answers 503 + Retry-After).
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from rankly.engine.config import Settings
from rankly.engine.events import Event
from rankly.engine.store import Store, StoreUnavailable

log = logging.getLogger("rankly.events")

DEFAULT_WINDOW_S = 24 * 3600.0
LOG_FILE = "events.jsonl"


@dataclass(frozen=True)
class AppendResult:
    """``accepted`` new events (``new``, in log order) and ``duplicates`` skipped."""

    accepted: int
    duplicates: int
    new: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class ImpressionSlate:
    """One served slate to log as impressions: one event per position, ``imp:<request>:<pos>``,
    type ``impression``, context ``{"position": pos, **context}``."""

    timestamp: float
    request_id: str
    user_id: str
    item_ids: tuple[str, ...]
    context: dict[str, Any]

    def events(self) -> list[Event]:
        return [Event(f"imp:{self.request_id}:{pos}", self.user_id, item, "impression",
                      self.timestamp, None, self.request_id, {"position": pos, **self.context})
                for pos, item in enumerate(self.item_ids)]


class EventLog(abc.ABC):
    """An append-only, replayable log of events with idempotency by ``event_id``."""

    kind: str = "abstract"

    async def open(self) -> None:  # noqa: B027 - optional
        """Recover state (dedup index) and get ready; must not fail when storage is down."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Flush and release resources."""

    @abc.abstractmethod
    async def append(self, events: Sequence[Event], *, idempotent: bool = True) -> AppendResult:
        """Store ``events`` durably and return what was new.

        With ``idempotent`` (client events), an ``event_id`` already stored within the window,
        or repeated in ``events``, is a duplicate. Impressions pass ``idempotent=False``: they
        are never retried by clients and would only bloat the index. Raises
        :class:`StoreUnavailable` when nothing could be stored durably (some events of the
        batch may be stored anyway: a retry counts those as duplicates).
        """

    async def append_impressions(self, slates: Sequence[ImpressionSlate]) -> int:
        """Store the impressions of ``slates`` durably (not idempotent); return how many.

        The same lines as :meth:`append` of ``slate.events()`` with ``idempotent=False``;
        logs override it to encode slates straight into lines, without an ``Event`` per
        position (impressions are logged for every served slate: #8). Raises
        :class:`StoreUnavailable` like :meth:`append`.
        """
        events = [e for slate in slates for e in slate.events()]
        return (await self.append(events, idempotent=False)).accepted

    @abc.abstractmethod
    def replay(self) -> AsyncIterator[Event]:
        """Yield every stored event, oldest first."""


def _options(settings: Settings) -> dict[str, Any]:
    return settings.plugin_options("events")


def window_seconds(settings: Settings) -> float:
    return float(_options(settings).get("idempotency_window_hours", 24.0)) * 3600.0


def open_event_log(settings: Settings, store: Store) -> EventLog:
    """The log that matches ``store``: a Redis Stream next to a Redis store, else a file."""
    if store.kind == "redis":
        return RedisStreamLog(store, settings)
    opts = _options(settings)
    directory = Path(opts.get("log_dir") or Path(settings.data_dir) / "events")
    return FileEventLog(directory, window_s=window_seconds(settings),
                        max_index=int(opts.get("dedup_max_entries", 1_000_000)))


# --- the embedded log: one JSON-lines file ---------------------------------------------------


def _encode(event: Event, at: float, idempotent: bool) -> bytes:
    doc = event.to_json()
    doc["at"] = round(at, 3)
    if not idempotent:
        doc["nd"] = 1
    # NOTE: orjson, not json: ~3x less CPU per line (benchmarks/test_encoding.py); served
    # slates are logged as impressions on every request, so this is on the serving budget.
    return orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE)


def _encode_impressions(slate: ImpressionSlate, at: float) -> list[bytes]:
    """``[_encode(e, at, False) for e in slate.events()]``, byte for byte, without building
    the events: the parts every position shares are encoded once per slate (~3x faster than
    per event, benchmarks/test_encoding.py)."""
    dumps = orjson.dumps
    head = dumps(f"imp:{slate.request_id}:")[:-1]  # the id's JSON string, still open
    user = b'","u":' + dumps(slate.user_id) + b',"i":'
    rid = b',"r":' + dumps(slate.request_id) if slate.request_id else b""
    mid = b',"t":"impression","ts":' + dumps(slate.timestamp) + rid + b',"c":{"position":'
    ctx = dumps(slate.context)
    tail = (b"," + ctx[1:] if len(ctx) > 2 else b"}") + b',"at":' + dumps(round(at, 3)) \
        + b',"nd":1}\n'
    return [b"".join((b'{"id":', head, str(pos).encode(), user, dumps(item), mid,
                      str(pos).encode(), tail))
            for pos, item in enumerate(slate.item_ids)]


class FileEventLog(EventLog):
    """``<dir>/events.jsonl``: one event per line, written with ``write`` + ``fsync`` before
    anything is acknowledged.

    Appends are group-committed: a writer task takes every batch queued meanwhile and makes
    them durable with one ``fsync``, so many concurrent small requests cost one disk flush.
    Crash safety: a crash can only leave an incomplete last line (it was never acknowledged);
    :meth:`open` cuts it off, and a failed write is truncated back, so the file always ends
    with a complete line. The dedup index (``event_id`` -> ingest time) is rebuilt on open
    from the lines inside the window; it holds at most ``max_index`` ids (oldest dropped
    first, which shortens the window under extreme rates rather than growing without bound).
    One process per file: several workers need the Redis store.
    """

    kind = "file"

    def __init__(self, directory: str | Path, *, window_s: float = DEFAULT_WINDOW_S,
                 max_index: int = 1_000_000, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOG_FILE
        self.window_s = window_s
        self.max_index = max_index
        self.clock = clock
        self.torn_lines = 0
        self._index: dict[str, float] = {}
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._queue: list[tuple[bytes, list[str], asyncio.Future[None]]] = []
        self._wakeup: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._fd: int | None = None
        self._size = 0

    # --- recovery -----------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._recover)
        except OSError as exc:
            log.error("event log %s unavailable at start (%s); appends answer 503", self.path,
                      exc)

    def _recover(self) -> None:
        """Cut a torn last line and rebuild the dedup index from the window."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            data = fh.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            self.torn_lines += 1
            log.warning("event log %s: dropping an incomplete last line (%d bytes, never "
                        "acknowledged)", self.path, len(data) - end)
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
        horizon = self.clock() - self.window_s
        index: dict[str, float] = {}
        for line in data[:end].splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                self.torn_lines += 1
                continue
            at = float(doc.get("at", 0.0))
            if not doc.get("nd") and at >= horizon:
                index[str(doc["id"])] = at
        self._index = index
        self._prune(self.clock())

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        index = self._index
        while index:
            oldest = next(iter(index))
            if index[oldest] >= horizon and len(index) <= self.max_index:
                break
            del index[oldest]

    # --- appending ----------------------------------------------------------------------------

    async def append(self, events: Sequence[Event], *, idempotent: bool = True) -> AppendResult:
        now = self.clock()
        self._prune(now)
        new: list[Event] = []
        ids: list[str] = []
        waits: list[asyncio.Future[None]] = []
        duplicates = 0
        batch_ids: set[str] = set()
        for e in events:
            if idempotent:
                eid = e.event_id
                if eid in self._index or eid in batch_ids:
                    duplicates += 1
                    continue
                pending = self._pending.get(eid)
                if pending is not None:
                    # NOTE: being written by another request: a duplicate only once it is
                    # durable, so wait for that write (and fail with it).
                    waits.append(pending)
                    duplicates += 1
                    continue
                batch_ids.add(eid)
                ids.append(eid)
            new.append(e)
        if waits:
            await asyncio.shield(asyncio.gather(*waits))
        if new:
            data = b"".join(_encode(e, now, idempotent) for e in new)
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            for eid in ids:
                self._pending[eid] = fut
            self._queue.append((data, ids, fut))
            self._start_writer()
            await asyncio.shield(fut)
        return AppendResult(len(new), duplicates, tuple(new))

    async def append_impressions(self, slates: Sequence[ImpressionSlate]) -> int:
        now = self.clock()
        lines = [line for slate in slates for line in _encode_impressions(slate, now)]
        if lines:
            # NOTE: the same queue, group commit and fsync as append(idempotent=False):
            # acknowledged only once durable, no dedup ids to index.
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._queue.append((b"".join(lines), [], fut))
            self._start_writer()
            await asyncio.shield(fut)
        return len(lines)

    def _start_writer(self) -> None:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop(),
                                                                   name="event-log-writer")
        self._wakeup.set()

    async def _write_loop(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            error: OSError | None = None
            try:
                await asyncio.to_thread(self._write_durably, b"".join(b for b, _, _ in batch))
            except OSError as exc:
                error = exc
                log.error("event log %s: write failed (%s); answering 503", self.path, exc)
            now = self.clock()
            for _, ids, fut in batch:
                for eid in ids:
                    self._pending.pop(eid, None)
                    if error is None:
                        self._index[eid] = now
                if fut.done():
                    continue
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(StoreUnavailable(f"event log: {error.strerror or error}"))
            self._prune(now)

    def _write_durably(self, data: bytes) -> None:
        """Append ``data`` and fsync (runs in a thread); on failure the file is cut back."""
        if self._fd is None:
            created = not self.path.exists()
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._fd).st_size
            if created:
                _fsync_dir(self.directory)
        fd = self._fd
        try:
            view = memoryview(data)
            done = 0
            while done < len(data):
                done += os.write(fd, view[done:])
            os.fsync(fd)
            self._size += len(data)
        except OSError:
            try:
                os.ftruncate(fd, self._size)
            except OSError:
                pass  # a torn tail is cut off on the next open
            self._close_fd()
            raise

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    async def close(self) -> None:
        deadline = time.monotonic() + 5.0
        while (self._pending or self._queue) and time.monotonic() < deadline:
            if self._wakeup is not None:
                self._wakeup.set()
            await asyncio.sleep(0.005)
        if self._writer is not None:
            self._writer.cancel()
            try:
                await self._writer
            except (asyncio.CancelledError, Exception):
                pass
            self._writer = None
        self._close_fd()

    # --- reading ------------------------------------------------------------------------------

    def iter_events(self) -> Iterator[Event]:
        """Every complete line as an :class:`Event`, oldest first (blocking reads)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # torn tail: never acknowledged
                try:
                    yield Event.from_json(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    continue

    async def replay(self) -> AsyncIterator[Event]:
        for i, event in enumerate(self.iter_events()):
            if i % 5000 == 4999:
                await asyncio.sleep(0)  # let a serving loop breathe during a rebuild
            yield event


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the Redis log: one stream ---------------------------------------------------------------

# KEYS[1]: the stream; KEYS[2..]: one idempotency key per event (same slot: one hash tag).
# ARGV[1]: window in ms; ARGV[2]: this call's token; ARGV[3]: MAXLEN (0 = none);
# ARGV[4..]: one payload per event. A key already holding this call's token means a retry of
# this very call stored it already (the reply was lost): accepted, not a duplicate.
APPEND_IDEMPOTENT = """
local out = {}
for i = 2, #KEYS do
  local payload = ARGV[i + 2]
  if redis.call('SET', KEYS[i], ARGV[2], 'NX', 'PX', ARGV[1]) then
    if ARGV[3] ~= '0' then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', payload)
    else
      redis.call('XADD', KEYS[1], '*', 'e', payload)
    end
    out[#out + 1] = 1
  elseif redis.call('GET', KEYS[i]) == ARGV[2] then
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

CHUNK = 200  # events per script call: keeps each call well under a millisecond of Redis time


class RedisStreamLog(EventLog):
    """``<ns>:{ev}:stream`` (XADD) plus ``<ns>:{ev}:evt:<event id>`` idempotency keys.

    Both are written by one Lua script, so an acknowledged event has both its stream entry and
    its idempotency key (and a duplicate neither). They share the hash tag ``{ev}`` so the
    script touches one slot of a Redis Cluster. Durability is Redis's: run it with
    ``appendonly yes`` (``appendfsync always`` for no loss on a power cut).
    """

    kind = "redis"

    def __init__(self, store: Any, settings: Settings, *, deadline_s: float = 2.0) -> None:
        from rankly.engine.keys import escape_id
        from rankly.engine.redis_client import GuardedRedis

        opts = _options(settings)
        self.store = store
        self.window_ms = int(window_seconds(settings) * 1000)
        self.maxlen = int(opts.get("stream_maxlen", 0))
        prefix = store.keys.prefix
        self.stream_key = f"{prefix}{{ev}}:stream"
        self._evt_prefix = f"{prefix}{{ev}}:evt:"
        self._escape = escape_id
        # the store's background client: 5 s socket timeouts (a batch script may take longer
        # than the 30 ms request-path budget), our own breaker and a 2 s deadline per call
        self.guard = GuardedRedis(store.background.client, settings, deadline_s=deadline_s)
        self._script = self.guard.client.register_script(APPEND_IDEMPOTENT)

    def evt_key(self, event_id: str) -> str:
        return self._evt_prefix + self._escape(event_id)

    async def append(self, events: Sequence[Event], *, idempotent: bool = True) -> AppendResult:
        unique: list[Event] = []
        seen: set[str] = set()
        duplicates = 0
        for e in events:
            if idempotent and e.event_id in seen:
                duplicates += 1
                continue
            seen.add(e.event_id)
            unique.append(e)
        now = time.time()
        new: list[Event] = []
        for start in range(0, len(unique), CHUNK):
            chunk = unique[start:start + CHUNK]
            payloads = [_encode(e, now, idempotent) for e in chunk]
            if idempotent:
                keys = [self.stream_key, *(self.evt_key(e.event_id) for e in chunk)]
                args = [self.window_ms, uuid.uuid4().hex, self.maxlen, *payloads]
                flags = await self.guard.run(lambda r, k=keys, a=args: self._script(keys=k,
                                                                                      args=a))
            else:
                flags = await self.guard.run(lambda r, p=payloads: self._add_plain(r, p))
            for e, flag in zip(chunk, flags, strict=True):
                if int(flag):
                    new.append(e)
                else:
                    duplicates += 1
        return AppendResult(len(new), duplicates, tuple(new))

    async def append_impressions(self, slates: Sequence[ImpressionSlate]) -> int:
        now = time.time()
        payloads = [line for slate in slates for line in _encode_impressions(slate, now)]
        for start in range(0, len(payloads), CHUNK):
            chunk = payloads[start:start + CHUNK]
            await self.guard.run(lambda r, p=chunk: self._add_plain(r, p))
        return len(payloads)

    async def _add_plain(self, r: Any, payloads: list[bytes]) -> list[int]:
        pipe = r.pipeline(transaction=False)
        for p in payloads:
            if self.maxlen:
                pipe.xadd(self.stream_key, {"e": p}, maxlen=self.maxlen, approximate=True)
            else:
                pipe.xadd(self.stream_key, {"e": p})
        await pipe.execute()
        return [1] * len(payloads)

    async def tail(self, after: str = "0-0", block_ms: int = 500, count: int = 1000,
                   stop: asyncio.Event | None = None) -> AsyncIterator[list[Event]]:
        """Yield batches of events stored after stream id ``after`` until ``stop`` is set
        (every worker's counters follow the one stream, in stream order). Outages are waited
        out."""
        last = after
        while stop is None or not stop.is_set():
            try:
                reply = await self.guard.run(
                    lambda r, a=last: r.xread({self.stream_key: a}, count=count,
                                              block=block_ms),
                    deadline_s=block_ms / 1000.0 + 2.0)
            except StoreUnavailable:
                await asyncio.sleep(0.5)
                continue
            if not reply:
                continue
            rows = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
            events = []
            for entry_id, fields in rows:
                last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                raw = fields.get(b"e") or fields.get("e")
                try:
                    events.append(Event.from_json(json.loads(raw)))
                except (ValueError, KeyError, TypeError):
                    continue
            yield events

    async def replay(self) -> AsyncIterator[Event]:
        start = "-"
        while True:
            rows = await self.guard.run(
                lambda r, s=start: r.xrange(self.stream_key, min=s, max="+", count=1000),
                deadline_s=10.0)
            if not rows:
                return
            for _entry_id, fields in rows:
                raw = fields.get(b"e") or fields.get("e")
                try:
                    yield Event.from_json(json.loads(raw))
                except (ValueError, KeyError, TypeError):
                    continue
            last = rows[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
