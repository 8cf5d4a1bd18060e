"""Durable, idempotent event logs: an fsynced JSON-lines file (embedded) and Redis Streams,
one per partition of the users.

An append returns only after its events are durably stored, so an acknowledged event is never
lost; an ``event_id`` seen within the idempotency window (default 24 h) is counted as a
duplicate and not stored again, so a retried request is never counted twice. Storage that
cannot be written raises :class:`StoreUnavailable` (the route answers 503 + Retry-After).
"""

from __future__ import annotations

import abc
import asyncio
import functools
import hashlib
import heapq
import json
import logging
import math
import os
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import orjson

from ..config import ConfigError, Settings
from ..storage.store import Store, StoreUnavailable
from .values import Event

log = logging.getLogger("rankly.events")

DEFAULT_WINDOW_S = 24 * 3600.0
LOG_FILE = "events.jsonl"


@dataclass(frozen=True)
class AppendResult:
    """``accepted`` new events (``new``, in log order) and ``duplicates`` skipped.

    ``repeated``: the duplicates that repeat a stored event exactly (same user, item, type and
    value), in the order given, when the log can tell (the Redis log). A call that stored an
    event and still failed (a lost reply, a replica that did not confirm) answered 503 before
    the event was projected; its retry is such a duplicate, and only the retry can project it.
    """

    accepted: int
    duplicates: int
    new: tuple[Event, ...] = ()
    repeated: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class ImpressionSlate:
    """One served slate to log as impressions: one event per position, ``imp:<request>:<pos>``,
    type ``impression``, context ``{"position": pos, **positions[pos], **item_fields[pos],
    **context}`` (``positions``: per-position fields such as an explored slate's propensities,
    or empty; ``item_fields``: each position's item's logged features, pre-encoded as a JSON
    object's members after a comma, ``b',"features":[...]'``, or ``b""`` for none; or empty)."""

    timestamp: float
    request_id: str
    user_id: str
    item_ids: tuple[str, ...]
    context: dict[str, Any]
    positions: tuple[dict[str, Any], ...] = ()
    item_fields: tuple[bytes, ...] = ()

    def events(self) -> list[Event]:
        per = self.positions or ({},) * len(self.item_ids)
        fields = [orjson.loads(b"{" + f[1:] + b"}") if f else {} for f in self.item_fields] \
            or ({},) * len(self.item_ids)
        return [Event(f"imp:{self.request_id}:{pos}", self.user_id, item, "impression",
                      self.timestamp, None, self.request_id,
                      {"position": pos, **per[pos], **fields[pos], **self.context})
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
    """``[plugins.events] idempotency_window_hours`` in seconds; a window that is not positive
    is a :class:`ConfigError` (Redis refuses a key that expires at once, so every append failed)."""
    hours = _options(settings).get("idempotency_window_hours", 24.0)
    try:
        seconds = float(hours) * 3600.0
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0.001):
        raise ConfigError(f"plugins.events.idempotency_window_hours must be a positive number "
                          f"of hours, not {hours!r}")
    return seconds


def open_event_log(settings: Settings, store: Store, *, readonly: bool = False) -> EventLog:
    """The log that matches ``store``: partitioned Redis Streams next to a Redis store, else a
    file. ``readonly``: for commands that only replay it (a server may be writing it)."""
    if store.kind == "redis":
        return RedisStreamLog(store, settings, readonly=readonly)
    opts = _options(settings)
    directory = Path(opts.get("log_dir") or Path(settings.data_dir) / "events")
    return FileEventLog(directory, window_s=window_seconds(settings),
                        max_index=int(opts.get("dedup_max_entries", 1_000_000)),
                        readonly=readonly)


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
    per = ([b"," + dumps(p)[1:-1] if p else b"" for p in slate.positions] if slate.positions
           else None)
    if slate.item_fields:  # encoded once per computed slate (#16)
        per = (slate.item_fields if per is None
               else [p + f for p, f in zip(per, slate.item_fields, strict=True)])
    positions, items = _POSITIONS, _ITEM_JSON
    if len(slate.item_ids) > len(positions) or len(items) + len(slate.item_ids) > _ITEM_JSON_MAX:
        positions = [str(pos).encode() for pos in range(len(slate.item_ids))]
        items.clear()
    lines = []
    for pos, item in enumerate(slate.item_ids):
        digits = positions[pos]
        encoded = items.get(item)
        if encoded is None:
            encoded = items[item] = dumps(item)
        lines.append(b"".join((b'{"id":', head, digits, user, encoded, mid, digits,
                               per[pos] if per else b"", tail)))
    return lines


#: Positions' decimal digits, built once: each of a slate's lines writes its position twice.
_POSITIONS = [str(pos).encode() for pos in range(1024)]
#: Item ids' JSON strings (served items repeat); emptied when full.
_ITEM_JSON: dict[str, bytes] = {}
_ITEM_JSON_MAX = 1 << 16


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
    One process per file: several workers need the Redis store. A ``readonly`` log (``rankly
    export-events``, ``rankly replay``, next to a running server) only reads: its :meth:`open`
    cuts nothing, since an incomplete last line may be the server's write in progress.
    """

    kind = "file"

    def __init__(self, directory: str | Path, *, window_s: float = DEFAULT_WINDOW_S,
                 max_index: int = 1_000_000, clock: Callable[[], float] = time.time,
                 readonly: bool = False) -> None:
        self.directory = Path(directory)
        self.readonly = readonly
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
        if self.readonly:
            return  # replay skips a torn tail; appends are refused
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
            # NOTE: a damaged line can still be JSON (a number, null, an object missing its
            # id): it is skipped as replay skips it, not allowed to stop the server's start
            try:
                doc = json.loads(line)
                at = float(doc.get("at", 0.0))
                eid = doc["id"]
            except (ValueError, TypeError, KeyError, AttributeError):
                eid = None
            if not isinstance(eid, str):
                self.torn_lines += 1
                continue
            if not doc.get("nd") and at >= horizon:
                index[eid] = at
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
        if self.readonly:
            raise StoreUnavailable("event log: opened read-only")
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
        if self.readonly:
            raise StoreUnavailable("event log: opened read-only")
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
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                self._size = _cut_torn_tail(self._fd)
            except OSError:
                self._close_fd()
                raise
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


def _cut_torn_tail(fd: int, block: int = 1 << 16) -> int:
    """Cut the file open on ``fd`` back to its last complete line; return its size.

    A write that failed and could not be cut back (the truncation failed too) leaves part
    of a line: appending after it would glue the next, acknowledged, line to it, and replay
    would skip both. Raises :class:`OSError` when the part cannot be cut off."""
    size = os.fstat(fd).st_size
    end = size
    while end > 0:
        start = max(0, end - block)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end < size:
        log.warning("event log: cutting an incomplete last line (%d bytes, never "
                    "acknowledged)", size - end)
        os.ftruncate(fd, end)
        os.fsync(fd)
    return end


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the Redis log: one stream per partition of the users -----------------------------------

# KEYS[1]: the partition's stream; KEYS[2..]: one idempotency key per event (same slot: the
# partition's hash tag). ARGV[1]: window in ms; ARGV[2]: this call's token; ARGV[3]: MAXLEN
# (0 = none); ARGV[4]: '1' when the caller waits for replicas; ARGV[5..]: one payload per event,
# then (optional) one digest per event of what it projects (:func:`_digest`), then (optional,
# with the digests) one event time per event.
# A key holds "<token>:<time>:<digest>" ("<token>:<digest>" when written by a rankly that kept
# no time). A key already holding this call's mark means a retry of this very call stored it
# already (the reply was lost): accepted (1), not a duplicate. A key holding another call's
# mark with the same digest is a retry of the same event (2, or "2:<time>" with the stored
# event's time): a duplicate, which the caller projects again, since the call that stored it
# may have failed before projecting; at the stored time, so that a retry without a timestamp
# of its own (the server stamps it on arrival) does not move the item in the user's history.
# Any other key is a plain duplicate (0). When the caller then WAITs for replicas, a
# key that was already there is re-written (same TTL): WAIT only covers this connection's own
# writes, and the rewrite comes after the original write in the replication stream, so a
# duplicate is never acknowledged before the event it duplicates has reached the replicas.
APPEND_IDEMPOTENT = """
local out = {}
local n = #KEYS - 1
for i = 2, #KEYS do
  local payload = ARGV[i + 3]
  local digest = ARGV[i + 3 + n]
  local at = ARGV[i + 3 + 2 * n]
  local mark = ARGV[2]
  if digest then
    if at then mark = mark .. ':' .. at end
    mark = mark .. ':' .. digest
  end
  if redis.call('SET', KEYS[i], mark, 'NX', 'PX', ARGV[1]) then
    if ARGV[3] ~= '0' then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', payload)
    else
      redis.call('XADD', KEYS[1], '*', 'e', payload)
    end
    out[#out + 1] = 1
  else
    if ARGV[4] == '1' then
      local ttl = redis.call('PTTL', KEYS[i])
      if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) end
    end
    local held = redis.call('GET', KEYS[i])
    if held == mark then
      out[#out + 1] = 1
    elseif digest and held and string.sub(held, -#digest - 1) == ':' .. digest then
      local stored = string.match(held, '^[^:]*:([^:]+):')
      if stored then out[#out + 1] = '2:' .. stored else out[#out + 1] = 2 end
    else
      out[#out + 1] = 0
    end
  end
end
return out
"""

CHUNK = 200  # events per script call: keeps each call well under a millisecond of Redis time
SLOTS = 16384  # Redis Cluster hash slots
LEGACY_TAG = "ev"  # the single stream of rankly before partitions (read alongside, see below)
LEGACY_RECHECK_S = 60.0


def partition_of(user_id: str, partitions: int) -> int:
    """The partition of ``user_id``'s events: CRC-32 of its UTF-8 bytes mod ``partitions``.

    Stable across processes, machines and Python versions (``hash()`` of a str is salted per
    process), so every worker sends one user's events to the same stream.
    """
    return zlib.crc32(user_id.encode("utf-8")) % partitions


@functools.lru_cache(maxsize=16)
def partition_tags(partitions: int) -> tuple[str, ...]:
    """The hash tag of each partition: ``ev:P``, or ``ev:P.K`` with the smallest ``K >= 1``
    that puts the tag's slot into the P-th ``1/partitions`` of the slot space.

    Plain ``ev:0..15`` land 8/4/4 on the three even slot ranges of a 3-master cluster; tags
    spread over the slot space land close to ``partitions / masters`` on every master of a
    contiguous, even slot split (16 on 3 masters: 6/5/5; 64 on 12: 5 or 6), so no master
    carries a disproportionate share of the log.
    """
    from redis.crc import key_slot

    tags = []
    for p in range(partitions):
        lo, hi = p * SLOTS // partitions, (p + 1) * SLOTS // partitions
        tag, k = f"ev:{p}", 0
        while not lo <= key_slot(tag.encode()) < hi:
            k += 1
            tag = f"ev:{p}.{k}"
        tags.append(tag)
    return tuple(tags)


def stream_keys(prefix: str, partitions: int) -> list[str]:
    """Every partition's stream key under the key ``prefix`` (``"<namespace>:"``)."""
    return [f"{prefix}{{{tag}}}:stream" for tag in partition_tags(partitions)]


def legacy_stream_key(prefix: str) -> str:
    """The single stream of a log written before partitions (``<ns>:{ev}:stream``)."""
    return f"{prefix}{{{LEGACY_TAG}}}:stream"


def _flag(flag: Any) -> tuple[int, float | None]:
    """The append script's outcome for one event: its code, and for a repeat (2) the stored
    event's time when its key holds one."""
    if isinstance(flag, bytes | str):
        text = flag.decode() if isinstance(flag, bytes) else flag
        code, _, at = text.partition(":")
        try:
            return int(code), float(at) if at else None
        except ValueError:
            return int(code), None
    return int(flag), None


def _digest(event: Event) -> str:
    """What ``event`` projects (user, item, type, value) as a short hex digest: a retry of the
    same event matches it whatever its timestamp, request id or context."""
    doc = orjson.dumps([event.user_id, event.item_id, event.type, event.value])
    return hashlib.blake2b(doc, digest_size=8).hexdigest()


def _entry_id(raw: Any) -> tuple[int, int]:
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else str(raw)).partition("-")
    return int(ms), int(seq or 0)


def _decode(fields: Any) -> Event | None:
    raw = fields.get(b"e") or fields.get("e")
    try:
        return Event.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError):
        return None


def _cluster_outage(exc: BaseException) -> bool:
    """A Redis reply that means "this slot has no writable master right now" (failover,
    resharding, a loading or read-only node), not a bug in the command."""
    import redis

    errors = redis.exceptions
    return isinstance(exc, errors.ClusterError | errors.AskError | errors.TryAgainError
                      | errors.ReadOnlyError | errors.BusyLoadingError) or str(exc).startswith(
        ("CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK", "LOADING", "READONLY", "MASTERDOWN"))


class RedisStreamLog(EventLog):
    """``events.partitions`` Redis Streams ``<ns>:{ev:P}:stream`` (XADD), each with its
    idempotency keys ``<ns>:{ev:P}:evt:<event id>``; the events of a user all go to the
    partition :func:`partition_of` their user id.

    A partition's stream and idempotency keys are written by one Lua script, so an acknowledged
    event has both its stream entry and its idempotency key (and a duplicate neither); they
    share the partition's hash tag, so the script touches one slot of a Redis Cluster, and the
    partitions spread over the masters (:func:`partition_tags`). One user's events keep their
    order (one stream, appended in order); events of different users in different partitions
    have no defined order between them. An ``event_id`` is deduplicated within its user's
    partition: a retry must carry the same user id (it always does: it is the same event).

    Durability is Redis's: run it with ``appendonly yes`` (``appendfsync always`` for no loss
    on a power cut). With replicas, ``[plugins.events] wait_replicas = R`` acknowledges a batch
    only once R replicas of each partition's master hold it (``WAIT``), so a failover that
    promotes one of them loses no acknowledged event; fewer in ``wait_timeout_ms`` (1000)
    answers 503 and the client's retry is counted as a duplicate once it is replicated.

    A log written before partitions (``<ns>:{ev}:stream``) is read alongside while that
    stream exists: replay and followers include it, and its idempotency keys still count, so
    nothing is lost, and once the old workers are gone nothing is stored twice across the
    upgrade (docs/scaling.md, "Upgrading from the single stream").
    """

    kind = "redis"

    def __init__(self, store: Any, settings: Settings, *, deadline_s: float = 2.0,
                 readonly: bool = False) -> None:
        from ..storage.keys import escape_id
        from ..storage.redis_client import GuardedRedis

        opts = _options(settings)
        self.store = store
        self.settings = settings
        self.readonly = readonly
        self.window_ms = int(window_seconds(settings) * 1000)
        self.maxlen = int(opts.get("stream_maxlen", 0))
        self.wait_replicas = int(opts.get("wait_replicas", 0))
        self.wait_timeout_ms = int(opts.get("wait_timeout_ms", 1000))
        self.partitions = settings.events.partitions
        prefix = store.keys.prefix
        self.tags = partition_tags(self.partitions)
        self.stream_keys = stream_keys(prefix, self.partitions)
        self._evt_prefixes = [f"{prefix}{{{tag}}}:evt:" for tag in self.tags]
        self.legacy_stream_key = legacy_stream_key(prefix)
        self._legacy_evt_prefix = f"{prefix}{{{LEGACY_TAG}}}:evt:"
        self._legacy: bool | None = None
        self._legacy_checked = 0.0
        self._escape = escape_id
        # the store's background client: 5 s socket timeouts (a batch script may take longer
        # than the 30 ms request-path budget), our own breaker and a 2 s deadline per call
        self.guard = GuardedRedis(store.background.client, settings, deadline_s=deadline_s,
                                  name="event_log")
        self.cluster = hasattr(self.guard.client, "get_node_from_key")
        self._script = self.guard.client.register_script(APPEND_IDEMPOTENT)
        self._nodes: dict[tuple[str, int], Any] = {}

    def partition(self, user_id: str) -> int:
        return partition_of(user_id, self.partitions)

    def evt_key(self, event_id: str, user_id: str) -> str:
        """The idempotency key of ``event_id`` (in the partition of ``user_id``)."""
        return self._evt_prefixes[self.partition(user_id)] + self._escape(event_id)

    async def open(self) -> None:
        """Look for the pre-partition stream; a ``readonly`` log (a command that only reads
        it) raises :class:`StoreUnavailable` when Redis cannot be reached, a server's waits."""
        try:
            await self._has_legacy()
        except StoreUnavailable as exc:
            if self.readonly:
                raise
            log.error("event log: Redis unavailable at start (%s); appends answer 503", exc)

    async def close(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        for client in nodes:
            try:
                await client.aclose()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass

    async def _has_legacy(self) -> bool:
        """Whether the pre-partition stream exists, checked again every minute: while it does
        not, a worker of the old version may still create it during a rolling upgrade; while
        it does, it may be deleted (the last step of the upgrade), and each append then stops
        reading its idempotency keys in the one ``{ev}`` slot."""
        now = time.monotonic()
        if self._legacy is not None and now - self._legacy_checked < LEGACY_RECHECK_S:
            return self._legacy
        found = await self.guard.run(lambda r: r.exists(self.legacy_stream_key))
        self._legacy, self._legacy_checked = bool(found), now
        if found:
            log.info("event log: reading the unpartitioned stream %s alongside the %d "
                     "partitions", self.legacy_stream_key, self.partitions)
        return self._legacy

    def _read_keys(self, legacy: bool) -> list[str]:
        return ([self.legacy_stream_key] if legacy else []) + self.stream_keys

    # --- appending ----------------------------------------------------------------------------

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
        if idempotent and unique and await self._has_legacy():
            stored = await self._in_legacy(unique)
            duplicates += len(stored)
            unique = [e for e in unique if e.event_id not in stored]
        now = time.time()
        groups: dict[int, list[tuple[int, Event]]] = {}
        for pos, e in enumerate(unique):
            groups.setdefault(self.partition(e.user_id), []).append((pos, e))
        new: list[tuple[int, Event]] = []
        repeated: list[tuple[int, Event]] = []
        # NOTE: round k writes the k-th chunk of every partition in one pipeline (a cluster
        # pipeline sends one per master): one round trip per batch of up to CHUNK events per
        # partition, whatever the partition count. A partition's next chunk waits for the
        # round before it, so a failed chunk never lets a user's later events in first.
        # A failure raises after its round: what was stored counts as duplicates on retry.
        for start in range(0, max((len(rows) for rows in groups.values()), default=0), CHUNK):
            calls = [(p, rows[start:start + CHUNK]) for p, rows in groups.items()
                     if len(rows) > start]
            for (_, chunk), flags in zip(calls, await self._append_round(calls, idempotent, now),
                                         strict=True):
                for row, flag in zip(chunk, flags, strict=True):
                    code, stored_at = _flag(flag)
                    if code == 1:
                        new.append(row)
                    else:
                        duplicates += 1
                        if code == 2:
                            repeated.append(row if stored_at is None else (
                                row[0], replace(row[1], timestamp=stored_at)))
        new.sort(key=lambda row: row[0])
        repeated.sort(key=lambda row: row[0])
        return AppendResult(len(new), duplicates, tuple(e for _, e in new),
                            tuple(e for _, e in repeated))

    async def _in_legacy(self, events: list[Event]) -> set[str]:
        """Event ids of ``events`` whose idempotency key is in the pre-partition log."""
        stored: set[str] = set()
        for start in range(0, len(events), CHUNK):
            ids = [e.event_id for e in events[start:start + CHUNK]]
            keys = [self._legacy_evt_prefix + self._escape(i) for i in ids]
            values = await self.guard.run(lambda r, k=keys: r.mget(k))
            stored.update(i for i, v in zip(ids, values, strict=True) if v is not None)
        return stored

    async def _append_round(self, calls: list[tuple[int, list[tuple[int, Event]]]],
                            idempotent: bool, now: float) -> list[list[int]]:
        """Store each ``(partition, chunk)`` of ``calls``; the stored flags per chunk."""
        specs: list[tuple[list[str], list[Any]]] = []
        for p, chunk in calls:
            payloads = [_encode(e, now, idempotent) for _, e in chunk]
            if idempotent:
                prefix = self._evt_prefixes[p]
                keys = [self.stream_keys[p], *(prefix + self._escape(e.event_id)
                                               for _, e in chunk)]
                specs.append((keys, [self.window_ms, uuid.uuid4().hex, self.maxlen,
                                     1 if self.wait_replicas else 0, *payloads,
                                     *(_digest(e) for _, e in chunk),
                                     *(repr(float(e.timestamp)) for _, e in chunk)]))
            else:
                specs.append(([self.stream_keys[p]], payloads))
        if not (idempotent and self.wait_replicas):
            return await self.guard.run(lambda r: self._pipelined(r, specs, idempotent))
        groups = await self.guard.run(lambda r: self._by_master(specs))
        outcomes = await asyncio.gather(
            *(self.guard.run(lambda r, c=client, i=idx: self._replicated(
                c, [specs[n] for n in i])) for client, idx in groups),
            return_exceptions=True)
        flags: list[list[int]] = [[] for _ in specs]
        for (_, idx), outcome in zip(groups, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                raise outcome
            for n, spec_flags in zip(idx, outcome, strict=True):
                flags[n] = spec_flags
        return flags

    async def _by_master(self, specs: list[tuple[list[str], list[Any]]]
                         ) -> list[tuple[Any, list[int]]]:
        """``specs``' indices grouped by the client of the master that holds their stream."""
        groups: dict[int, tuple[Any, list[int]]] = {}
        for n, (keys, _) in enumerate(specs):
            client = await self._master_of(keys[0])
            groups.setdefault(id(client), (client, []))[1].append(n)
        return list(groups.values())

    async def _pipelined(self, r: Any, specs: list[tuple[list[str], list[Any]]],
                         idempotent: bool) -> list[list[int]]:
        """One pipeline of the append script (or plain XADDs) per spec; flags per spec."""
        import redis

        for attempt in range(2):
            pipe = r.pipeline(transaction=False)
            for keys, args in specs:
                if idempotent:
                    pipe.evalsha(self._script.sha, len(keys), *keys, *args)
                else:
                    for payload in args:
                        if self.maxlen:
                            pipe.xadd(keys[0], {"e": payload}, maxlen=self.maxlen,
                                      approximate=True)
                        else:
                            pipe.xadd(keys[0], {"e": payload})
            try:
                results = await pipe.execute(raise_on_error=False)
            except redis.ResponseError as exc:
                await self._raise_outage(exc)
            errors = [x for x in results if isinstance(x, Exception)]
            if not errors:
                break
            if attempt == 0 and all(isinstance(x, redis.exceptions.NoScriptError)
                                    for x in errors):
                # a node that never ran the script (new, restarted or failed over): load it
                # and re-send the round (same tokens: what ran already answers "stored")
                await r.script_load(APPEND_IDEMPOTENT)
                continue
            await self._raise_outage(errors[0])
        if idempotent:
            return [list(flags) for flags in results]
        return [[1] * len(args) for _, args in specs]

    async def _raise_outage(self, exc: BaseException) -> NoReturn:
        """Raise ``exc`` as an outage (after reloading the slot map) when it is one."""
        import redis

        if isinstance(exc, redis.ResponseError) and not _cluster_outage(exc):
            raise exc
        await self._refresh_topology()
        raise redis.ConnectionError(f"partition unavailable: {exc}") from exc

    async def _replicated(self, client: Any, specs: list[tuple[list[str], list[Any]]]
                          ) -> list[list[int]]:
        """The append script of each spec on one master, then one ``WAIT`` for its replicas;
        a slot without a writable master is an outage (``StoreUnavailable``)."""
        import redis

        try:
            for attempt in range(2):
                # NOTE: one pipeline is one connection: WAIT counts the replicas that
                # acknowledged this connection's writes, so it must follow the scripts on
                # the same connection.
                pipe = client.pipeline(transaction=False)
                for keys, args in specs:
                    pipe.evalsha(self._script.sha, len(keys), *keys, *args)
                pipe.wait(self.wait_replicas, self.wait_timeout_ms)
                *flags, acked = await pipe.execute(raise_on_error=False)
                errors = [x for x in (*flags, acked) if isinstance(x, Exception)]
                if not errors:
                    break
                if attempt == 0 and all(isinstance(x, redis.exceptions.NoScriptError)
                                        for x in errors):
                    await client.script_load(APPEND_IDEMPOTENT)  # then the same tokens again
                    continue
                await self._raise_outage(errors[0])
        except redis.ResponseError as exc:
            await self._raise_outage(exc)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            await self._refresh_topology()
            raise
        if int(acked) < self.wait_replicas:
            raise redis.ConnectionError(f"only {acked} of {self.wait_replicas} replicas "
                                        f"acknowledged within {self.wait_timeout_ms} ms")
        return [list(f) for f in flags]

    async def _master_of(self, key: str) -> Any:
        """A standalone client of the master that holds ``key`` (the store's client when
        Redis is not a cluster)."""
        client = self.guard.client
        if not self.cluster:
            return client
        if getattr(client, "_initialize", False):
            await client.initialize()
        node = client.get_node_from_key(key)
        found = self._nodes.get((node.host, node.port))
        if found is None:
            import redis.asyncio

            allowed = {"username", "password", "socket_timeout", "socket_connect_timeout",
                       "ssl", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
                       "client_name", "health_check_interval"}
            kwargs = {k: v for k, v in node.connection_kwargs.items() if k in allowed}
            found = redis.asyncio.Redis(host=node.host, port=node.port, **kwargs)
            self._nodes[(node.host, node.port)] = found
        return found

    async def _refresh_topology(self) -> None:
        """Reload the cluster's slot map after a failover (the next call finds the new
        master); nothing on a standalone Redis."""
        if not self.cluster:
            return
        try:
            await self.guard.client.nodes_manager.initialize()
        except Exception:  # noqa: BLE001 - the cluster is still failing over: next call
            pass

    async def append_impressions(self, slates: Sequence[ImpressionSlate]) -> int:
        now = time.time()
        groups: dict[int, list[bytes]] = {}
        for slate in slates:
            groups.setdefault(self.partition(slate.user_id), []).extend(
                _encode_impressions(slate, now))
        for start in range(0, max((len(lines) for lines in groups.values()), default=0),
                           CHUNK):
            specs = [([self.stream_keys[p]], lines[start:start + CHUNK])
                     for p, lines in groups.items() if len(lines) > start]
            await self.guard.run(lambda r, s=specs: self._pipelined(r, s, False))
        return sum(len(lines) for lines in groups.values())

    # --- reading ------------------------------------------------------------------------------

    async def tail(self, after: str = "0-0", block_ms: int = 500, count: int = 1000,
                   stop: asyncio.Event | None = None) -> AsyncIterator[list[Event]]:
        """Yield batches of events stored after stream id ``after`` in every partition (and
        the pre-partition stream, when there is one) until ``stop`` is set. Each batch comes
        from one partition, in its order; partitions interleave. Outages are waited out.

        A standalone Redis is read with one blocking ``XREAD`` over every stream; a cluster
        with one per stream (a multi-key ``XREAD`` cannot span slots), each on its own task.
        """
        while True:
            try:
                legacy = await self._has_legacy()
                break
            except StoreUnavailable:
                if stop is not None and stop.is_set():
                    return
                await asyncio.sleep(0.5)
        keys = self._read_keys(legacy)
        queue: asyncio.Queue[list[Event]] = asyncio.Queue(maxsize=4 * len(keys))
        groups = [[k] for k in keys] if self.cluster else [keys]
        readers = [asyncio.get_running_loop().create_task(
            self._read_streams(group, after, block_ms, count, stop, queue),
            name="event-log-tail") for group in groups]
        try:
            while stop is None or not stop.is_set():
                try:
                    async with asyncio.timeout(block_ms / 1000.0):
                        batch = await queue.get()
                except TimeoutError:
                    continue
                yield batch
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _read_streams(self, keys: list[str], after: str, block_ms: int, count: int,
                            stop: asyncio.Event | None,
                            queue: asyncio.Queue[list[Event]]) -> None:
        import redis

        last = dict.fromkeys(keys, after)
        while stop is None or not stop.is_set():
            try:
                reply = await self.guard.run(
                    lambda r, s=dict(last): r.xread(s, count=count, block=block_ms),
                    deadline_s=block_ms / 1000.0 + 2.0)
            except (StoreUnavailable, redis.RedisError) as exc:
                # NOTE: a cluster failing over answers CLUSTERDOWN/MOVED errors, not only
                # timeouts; a reader that died on one would stop following its partition.
                if isinstance(exc, redis.RedisError):
                    log.warning("event log: following %s: %s", keys[0], exc)
                    await self._refresh_topology()
                await asyncio.sleep(0.5)
                continue
            if not reply:
                continue
            streams = reply.items() if isinstance(reply, dict) else reply
            for key, rows in streams:
                if isinstance(reply, dict):
                    rows = rows[0]  # RESP3: {key: [rows]}
                name = key.decode() if isinstance(key, bytes) else str(key)
                events = []
                for entry_id, fields in rows:
                    last[name] = entry_id.decode() if isinstance(entry_id, bytes) \
                        else str(entry_id)
                    event = _decode(fields)
                    if event is not None:
                        events.append(event)
                await queue.put(events)

    async def _rows(self, key: str, page: int = 1000) -> AsyncIterator[tuple[tuple[int, int],
                                                                           Any]]:
        start = "-"
        while True:
            rows = await self.guard.run(
                lambda r, s=start: r.xrange(key, min=s, max="+", count=page), deadline_s=10.0)
            if not rows:
                return
            for entry_id, fields in rows:
                yield _entry_id(entry_id), fields
            last = rows[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else str(last))

    async def replay(self) -> AsyncIterator[Event]:
        """Every stored event: the streams merged by entry id (time order up to the clocks of
        the masters; a user's events, all in one stream, in exactly their stored order).

        Entries of one millisecond are taken stream by stream, the old single stream first:
        an id's sequence number counts within its own stream only, so across streams it
        says nothing about order, while the old stream's entries are the older ones."""
        streams = [self._rows(k) for k in self._read_keys(await self._has_legacy())]
        heap: list[tuple[tuple[int, int, int], Any]] = []
        for i, rows in enumerate(streams):
            first = await anext(rows, None)
            if first is not None:
                heap.append(((first[0][0], i, first[0][1]), first[1]))
        heapq.heapify(heap)
        while heap:
            (_, i, _), fields = heap[0]
            event = _decode(fields)
            if event is not None:
                yield event
            following = await anext(streams[i], None)
            if following is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, ((following[0][0], i, following[0][1]), following[1]))
