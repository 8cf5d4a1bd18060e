"""Event logs: durable before ack, idempotent by event_id, crash-safe, replayable."""

from __future__ import annotations

import asyncio
import errno
import shutil

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankly.engine.config import ConfigError, load_settings
from rankly.engine.events.log import (
    FileEventLog,
    ImpressionSlate,
    RedisStreamLog,
    _encode,
    _encode_impressions,
    window_seconds,
)
from rankly.engine.events.values import Event
from rankly.engine.storage.store import StoreUnavailable


def E(i, user="u1", kind="view", ts=1_700_000_000.0) -> Event:
    return Event(f"e{i}", user, f"i{i % 7}", kind, ts + i)


def run(coro):
    return asyncio.run(coro)


async def collect(log) -> list[Event]:
    return [e async for e in log.replay()]


class Clock:
    def __init__(self, t=1_700_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_appended_events_are_on_disk_and_replay_in_order(tmp_path):
    async def go():
        log = FileEventLog(tmp_path)
        await log.open()
        r1 = await log.append([E(1), E(2)])
        r2 = await log.append([E(3)])
        await log.close()
        reopened = FileEventLog(tmp_path)
        await reopened.open()
        return r1, r2, await collect(reopened)

    r1, r2, events = run(go())
    assert (r1.accepted, r1.duplicates, r2.accepted) == (2, 0, 1)
    assert events == [E(1), E(2), E(3)]


def test_same_event_id_is_counted_once_across_calls_batches_and_restarts(tmp_path):
    async def go():
        log = FileEventLog(tmp_path)
        await log.open()
        a = await log.append([E(1), E(1), E(2)])
        b = await log.append([E(1)])
        await log.close()
        log2 = FileEventLog(tmp_path)
        await log2.open()  # the dedup index is rebuilt from the file
        c = await log2.append([E(2), E(3)])
        await log2.close()
        return a, b, c, await collect(log2)

    a, b, c, events = run(go())
    assert (a.accepted, a.duplicates) == (2, 1)
    assert (b.accepted, b.duplicates) == (0, 1)
    assert (c.accepted, c.duplicates) == (1, 1)
    assert [e.event_id for e in events] == ["e1", "e2", "e3"]


def test_concurrent_appends_of_one_event_id_store_it_once(tmp_path):
    async def go():
        log = FileEventLog(tmp_path)
        await log.open()
        results = await asyncio.gather(*(log.append([E(1)]) for _ in range(20)))
        await log.close()
        return results, await collect(log)

    results, events = run(go())
    assert sum(r.accepted for r in results) == 1
    assert sum(r.duplicates for r in results) == 19
    assert len(events) == 1


def test_ids_older_than_the_window_are_accepted_again(tmp_path):
    clock = Clock()

    async def go():
        log = FileEventLog(tmp_path, window_s=3600, clock=clock)
        await log.open()
        first = await log.append([E(1)])
        clock.t += 3599
        inside = await log.append([E(1)])
        clock.t += 2
        outside = await log.append([E(1)])
        await log.close()
        return first.accepted, inside.accepted, outside.accepted

    assert run(go()) == (1, 0, 1)


def test_dedup_index_is_bounded(tmp_path):
    async def go():
        log = FileEventLog(tmp_path, max_index=10)
        await log.open()
        await log.append([E(i) for i in range(50)])
        size = len(log._index)
        again = await log.append([E(49)])
        await log.close()
        return size, again.duplicates

    size, dup = run(go())
    assert size <= 11 and dup == 1


def test_torn_last_line_is_dropped_on_recovery_and_appends_stay_clean(tmp_path):
    async def go():
        log = FileEventLog(tmp_path)
        await log.open()
        await log.append([E(1), E(2)])
        await log.close()
        with open(log.path, "ab") as fh:  # a crash in the middle of a write
            fh.write(b'{"id":"e3","u":"u1","i":"i3","t":"vi')
        log2 = FileEventLog(tmp_path)
        await log2.open()
        r = await log2.append([E(3), E(4)])
        await log2.close()
        return log2.torn_lines, r.accepted, await collect(log2)

    torn, accepted, events = run(go())
    assert torn == 1 and accepted == 2
    assert [e.event_id for e in events] == ["e1", "e2", "e3", "e4"]


def test_impressions_bypass_the_dedup_index(tmp_path):
    async def go():
        log = FileEventLog(tmp_path)
        await log.open()
        await log.append([E(1, kind="impression")], idempotent=False)
        r = await log.append([E(1, kind="impression")], idempotent=False)
        await log.close()
        return r.accepted, len(log._index)

    assert run(go()) == (1, 0)


_FIELD_VALUES = st.one_of(st.none(), st.integers(-5, 10**6), st.text(max_size=4),
                         st.floats(allow_nan=False, allow_infinity=False, width=32),
                         st.lists(st.one_of(st.none(), st.integers(0, 99),
                                            st.floats(allow_nan=False, allow_infinity=False)),
                                  max_size=8),
                         st.dictionaries(st.sampled_from(["ease", "popular"]),
                                         st.integers(0, 99), max_size=2))
_ITEM_FIELDS = st.dictionaries(st.sampled_from(["features", "sources", "x"]), _FIELD_VALUES,
                               max_size=2)


@st.composite
def _slates(draw) -> ImpressionSlate:
    n = draw(st.integers(0, 6))
    items = tuple(draw(st.lists(st.text(min_size=1, max_size=5), min_size=n, max_size=n)))
    positions = ()
    if n and draw(st.booleans()):
        positions = tuple({"propensity": draw(st.floats(0.01, 1.0)), "base_position": k}
                          for k in range(n))
    # the parts name disjoint fields: a slate logs one propensity, per position or shared
    shared = ["model_version", "cached", "history_length", "scorer"]
    context = draw(st.dictionaries(st.sampled_from(shared + ([] if positions else
                                                             ["propensity"])),
                                   _FIELD_VALUES, max_size=4))
    fields = ()
    if n and draw(st.booleans()):
        fields = tuple(b"," + orjson.dumps(f)[1:-1] if f else b""
                       for f in draw(st.lists(_ITEM_FIELDS, min_size=n, max_size=n)))
    return ImpressionSlate(draw(st.floats(0, 2e9)), draw(st.text(max_size=6)),
                           draw(st.text(max_size=6)), items, context, positions, fields)


@settings(max_examples=300, deadline=None)
@given(_slates())
def test_impression_lines_are_their_events_lines(slate):
    """Pre-encoded item fields (a cached slate's) are spliced where its events write them."""
    assert _encode_impressions(slate, 2.5) == [_encode(e, 2.5, False) for e in slate.events()]


def test_pre_encoded_item_fields_are_logged_in_each_positions_context():
    fields = (b',"features":[0,1.5,null]', b"", b',"features":[2,0.25,null],"sources":{"a":1}')
    slate = ImpressionSlate(1.0, "r", "u", ("a", "b", "c"), {"cached": True},
                            ({"propensity": 0.5, "base_position": 1},) * 3, fields)
    contexts = [e.context for e in slate.events()]
    assert [list(c) for c in contexts] == [
        ["position", "propensity", "base_position", "features", "cached"],
        ["position", "propensity", "base_position", "cached"],
        ["position", "propensity", "base_position", "features", "sources", "cached"]]
    assert contexts[2]["sources"] == {"a": 1} and contexts[0]["features"] == [0, 1.5, None]


def test_unwritable_storage_raises_and_nothing_is_lost_after_recovery(tmp_path):
    folder = tmp_path / "events"

    async def go():
        log = FileEventLog(folder)
        await log.open()
        await log.append([E(1)])
        log._close_fd()  # NOTE: force a reopen so the broken path is seen (root ignores modes)
        shutil.move(folder, tmp_path / "moved")
        folder.write_text("not a directory")
        with pytest.raises(StoreUnavailable):
            await log.append([E(2), E(3)])
        folder.unlink()
        shutil.move(tmp_path / "moved", folder)
        retried = await log.append([E(1), E(2), E(3)])
        await log.close()
        return retried, await collect(log)

    retried, events = run(go())
    assert (retried.accepted, retried.duplicates) == (2, 1)
    assert [e.event_id for e in events] == ["e1", "e2", "e3"]


def test_failed_write_is_cut_back_and_waiters_on_it_fail_too(tmp_path, monkeypatch):
    async def go():
        log = FileEventLog(tmp_path)
        await log.open()
        await log.append([E(1)])
        real = FileEventLog._write_durably

        def disk_full(self, data):
            import os
            os.write(self._fd, data[: len(data) // 2])  # a partial write, then ENOSPC
            os.ftruncate(self._fd, self._size)
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(FileEventLog, "_write_durably", disk_full)
        outcomes = await asyncio.gather(log.append([E(2)]), log.append([E(2)]),
                                        return_exceptions=True)
        monkeypatch.setattr(FileEventLog, "_write_durably", real)
        again = await log.append([E(2)])
        await log.close()
        return outcomes, again, await collect(log)

    outcomes, again, events = run(go())
    assert all(isinstance(o, StoreUnavailable) for o in outcomes)
    assert again.accepted == 1
    assert [e.event_id for e in events] == ["e1", "e2"]


# --- Redis Stream log ------------------------------------------------------------------------


def _redis_log(url, namespace):
    from rankly.engine.storage.redis_store import RedisStore

    settings = load_settings(environ={}, store_url=url, namespace=namespace)
    store = RedisStore(url, settings)
    return store, RedisStreamLog(store, settings)


def test_redis_stream_log_is_idempotent_and_replays(redis_url, redis_namespace):
    async def go():
        store, log = _redis_log(redis_url, redis_namespace)
        try:
            a = await log.append([E(1), E(2), E(1)])
            b = await log.append([E(2), E(3)])
            c = await log.append([E(9, kind="impression")], idempotent=False)
            return a, b, c, await collect(log)
        finally:
            await store.close()

    a, b, c, events = run(go())
    assert (a.accepted, a.duplicates) == (2, 1)
    assert (b.accepted, b.duplicates) == (1, 1)
    assert c.accepted == 1
    assert [e.event_id for e in events] == ["e1", "e2", "e3", "e9"]


def test_redis_retry_of_the_same_call_is_not_a_duplicate(redis_server, redis_namespace):
    """A script call whose reply was lost is re-sent with the same token: still accepted."""

    async def go():
        store, log = _redis_log(redis_server.url, redis_namespace)
        try:
            keys = [log.stream_keys[log.partition("u1")], log.evt_key("e1", "u1")]
            args = [60_000, "token-1", 0, 0, b"{}"]
            first = await log._script(keys=keys, args=args)
            resent = await log._script(keys=keys, args=args)
            other = await log._script(keys=keys, args=[60_000, "token-2", 0, 0, b"{}"])
            return first, resent, other
        finally:
            await store.close()

    assert run(go()) == ([1], [1], [0])


def test_redis_duplicates_that_repeat_a_stored_event_are_reported(redis_url, redis_namespace):
    """A retry of a stored event (any timestamp) is a duplicate listed in ``repeated``, for the
    caller to project again, with the stored event's time (a retry the server stamped on
    arrival must not move the item in the history); the same event_id with another item is a
    duplicate only."""

    async def go():
        store, log = _redis_log(redis_url, redis_namespace)
        try:
            first = await log.append([E(1), E(2)])
            retry = await log.append([E(1, ts=1_700_000_050.0), E(3),
                                      Event("e2", "u1", "other", "view", 1_700_000_000.0)])
            return first, retry, await collect(log)
        finally:
            await store.close()

    first, retry, events = run(go())
    assert (first.accepted, first.repeated) == (2, ())
    assert (retry.accepted, retry.duplicates) == (1, 2)
    assert [e.event_id for e in retry.new] == ["e3"]
    assert [(e.event_id, e.timestamp) for e in retry.repeated] == [("e1", 1_700_000_001.0)]
    assert [e.event_id for e in events] == ["e1", "e2", "e3"]


@pytest.mark.parametrize("hours", [0, -1, "soon", float("nan")])
def test_an_idempotency_window_that_is_not_positive_is_a_config_error(hours):
    settings = load_settings(environ={}, plugins={"events": {"idempotency_window_hours": hours}})
    with pytest.raises(ConfigError, match="idempotency_window_hours"):
        window_seconds(settings)


def test_redis_append_with_a_short_window_is_accepted(redis_server, redis_namespace):
    """The shortest window Redis can hold (1 ms) still stores events."""

    async def go():
        from rankly.engine.storage.redis_store import RedisStore

        settings = load_settings(environ={}, store_url=redis_server.url,
                                 namespace=redis_namespace,
                                 plugins={"events": {"idempotency_window_hours": 1e-6}})
        store = RedisStore(redis_server.url, settings)
        try:
            return await RedisStreamLog(store, settings).append([E(1)])
        finally:
            await store.close()

    assert run(go()).accepted == 1


def test_redis_down_raises_store_unavailable(spare_redis, redis_namespace):
    async def go():
        store, log = _redis_log(spare_redis.url, redis_namespace)
        try:
            with pytest.raises(StoreUnavailable):
                await log.append([E(1)])
            spare_redis.start()
            for _ in range(50):  # the breaker probes again after its cooldown
                try:
                    return await log.append([E(1)])
                except StoreUnavailable:
                    await asyncio.sleep(0.1)
        finally:
            await store.close()

    assert run(go()).accepted == 1
