"""Projections: decayed counters, replay equals live, and the live trending generator."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankly.engine.config import load_settings
from rankly.engine.events.log import FileEventLog
from rankly.engine.events.projections import DecayedCounter, Projections, attach
from rankly.engine.events.values import Event
from rankly.engine.plugins import ComponentContext
from rankly.engine.storage.memory_store import MemoryStore
from rankly.engine.types import Reason, UserFeatures
from rankly.plugins.candidates.trending import TrendingCandidates

T0 = 1_700_000_000.0
SETTINGS = load_settings(environ={}, event_types={"wishlist": 2.0})
TYPES = ["view", "click", "add_to_cart", "purchase", "rating", "impression", "wishlist"]


def test_counter_halves_every_half_life_and_survives_landmark_shifts():
    c = DecayedCounter(half_life_s=3600)
    c.add("a", 4.0, T0)
    assert c.value("a", T0 + 3600) == pytest.approx(2.0)
    c.add("b", 1.0, T0 + 3600 * 200)  # far enough to move the landmark
    assert c.value("a", T0 + 3600 * 200) == pytest.approx(4.0 * 2.0 ** -200, rel=1e-9)
    assert c.value("b", T0 + 3600 * 201) == pytest.approx(0.5)


def test_counter_array_follows_adds_after_binding():
    c = DecayedCounter(half_life_s=60)
    index = {"a": 0, "b": 1}
    c.add("a", 1.0, T0)
    first = c.array(index, 2)
    c.add("b", 3.0, T0)
    c.add("zzz", 9.0, T0)  # not in the catalog: counted, not in the array
    assert first.tolist() == [1.0, 0.0]
    assert c.array(index, 2).tolist() == [1.0, 3.0]


def random_events(model, n: int, seed: int = 0) -> list[Event]:
    rng = random.Random(seed)
    ids = [str(x) for x in model.catalog.item_ids.tolist()] + ["unknown-1", "unknown-2"]
    out = []
    for i in range(n):
        kind = rng.choice(TYPES)
        out.append(Event(f"e{i}", f"u{rng.randrange(30)}", rng.choice(ids), kind,
                         T0 + i * 7.0 + rng.random(), rng.uniform(0, 5) if kind == "rating"
                         else None))
    return out


async def user_states(store: MemoryStore, users) -> dict:
    return {u: await store.fetch_user(u) for u in users}


def test_replay_equals_live(tmp_path, model):
    events = random_events(model, 3000)

    async def go():
        live_store = MemoryStore(history_limit=50)
        live = Projections(SETTINGS, live_store, lambda: model.catalog)
        log = FileEventLog(tmp_path)
        await log.open()
        for start in range(0, len(events), 97):  # live: append then project, batch by batch
            batch = events[start:start + 97]
            batch = batch + batch[:3]  # retries inside a batch
            result = await log.append(batch)
            await live.apply(result.new)
        await log.close()
        fresh_store = MemoryStore(history_limit=50)
        replayed = Projections(SETTINGS, fresh_store, lambda: model.catalog)
        await replayed.rebuild(log)
        users = {e.user_id for e in events}
        return (live, replayed, await user_states(live_store, users),
                await user_states(fresh_store, users))

    live, replayed, live_users, replayed_users = asyncio.run(go())
    assert live_users == replayed_users
    assert live.stats.as_dict() == replayed.stats.as_dict()
    assert live.stats.unknown_items > 0
    at = T0 + 3000 * 7
    for name in ("popularity", "trending"):
        a = getattr(live, name).snapshot(at)
        b = getattr(replayed, name).snapshot(at)
        assert a.keys() == b.keys()
        assert all(a[k] == pytest.approx(b[k], rel=1e-12) for k in a)
    assert np.allclose(live.item_scores(model.catalog), replayed.item_scores(model.catalog))


def test_purchases_go_to_seen_and_impressions_to_nothing(model):
    async def go():
        store = MemoryStore()
        proj = Projections(SETTINGS, store, lambda: model.catalog)
        await proj.apply([Event("a", "u", "1", "purchase", T0), Event("b", "u", "2", "view", T0),
                          Event("c", "u", "3", "impression", T0)])
        return await store.fetch_user("u"), proj

    user, proj = asyncio.run(go())
    assert user.history == ("2", "1") and user.seen == frozenset({"1"})
    assert proj.popularity.value("3", T0) == 0.0


def _generator(model, store):
    ctx = ComponentContext("trending", model, {}, SETTINGS, store)
    return TrendingCandidates(ctx)


def cold() -> UserFeatures:
    empty = np.empty(0, np.int64)
    return UserFeatures(None, -1, empty, empty)


def test_a_newly_hot_item_rises_without_retraining(model):
    store = MemoryStore()
    gen = _generator(model, store)
    assert len(gen.generate(cold(), 10)) == 0  # no live projections yet
    proj = Projections(SETTINGS, store, lambda: model.catalog)
    attach(store, proj)
    catalog = model.catalog
    hot = str(catalog.item_ids[-1])
    events = [Event(f"x{i}", f"u{i}", str(catalog.item_ids[i % 5]), "view", T0 + i)
              for i in range(20)]
    events += [Event(f"h{i}", f"v{i}", hot, "purchase", T0 + 30 + i) for i in range(10)]
    asyncio.run(proj.apply(events))
    cands = gen.generate(cold(), 10)
    hot_idx = catalog.index[hot]
    assert cands.items[0] == hot_idx
    assert set(cands.reasons.tolist()) == {int(Reason.TRENDING_IN)}
    assert cands.anchors[0] == catalog.categories[hot_idx]
    assert set(cands.items.tolist()) <= {hot_idx} | {catalog.index[str(catalog.item_ids[i])]
                                                      for i in range(5)}
    seen = np.array([hot_idx])
    user = UserFeatures("u", -1, seen, seen)
    assert hot_idx not in gen.generate(user, 10).items


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcde"), st.floats(0.1, 10.0),
                          st.floats(0.0, 400_000.0)), max_size=40),
       st.booleans())
def test_add_many_is_add_in_order(updates, bound):
    # half-life 1 h: a jump of 4 days of event time passes the renormalization threshold
    one, many = DecayedCounter(half_life_s=3600), DecayedCounter(half_life_s=3600)
    index = {k: i for i, k in enumerate("abcd")}
    if bound:
        one.array(index, 4)
        many.array(index, 4)
    for key, w, t in updates:
        one.add(key, w, t)
    many.add_many(updates)
    assert one.t0 == many.t0 and one.latest == many.latest
    assert one.values == many.values
    if updates:
        np.testing.assert_array_equal(one.array(index, 4), many.array(index, 4))


class RefusingStore(MemoryStore):
    """The embedded store, refusing its next ``refusals`` user-state writes (a failover)."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals

    async def record_interactions(self, rows):
        if self.refusals > 0:
            self.refusals -= 1
            from rankly.engine.storage.store import StoreUnavailable

            raise StoreUnavailable("failover in progress")
        await super().record_interactions(rows)


def test_rows_the_store_refused_are_written_first_with_the_next_batch():
    store = RefusingStore(refusals=1)
    projections = Projections(SETTINGS, store)
    bought = Event("e1", "u", "bought", "purchase", T0)
    viewed = Event("e2", "u", "viewed", "view", T0 + 1)

    async def scenario():
        await projections.apply([bought])  # refused: kept, not lost
        assert projections.stats.store_errors == 1
        assert not (await store.fetch_user("u")).seen
        await projections.apply([viewed])
        return await store.fetch_user("u")

    user = asyncio.run(scenario())
    assert "bought" in user.seen  # never recommended again, without a replay
    assert list(user.history) == ["viewed", "bought"]  # newest first: the log's order
    assert not projections.unwritten and projections.stats.store_dropped == 0


def test_rows_waiting_past_the_bound_are_dropped_and_counted(monkeypatch):
    from rankly.engine.events import projections as module

    monkeypatch.setattr(module, "RETRY_MAX_ROWS", 3)
    store = RefusingStore(refusals=2)
    projections = Projections(SETTINGS, store)
    events = [Event(f"e{i}", "u", f"i{i}", "purchase", T0 + i) for i in range(5)]

    async def scenario():
        await projections.apply(events[:2])
        await projections.apply(events[2:4])  # refused again: 4 waiting, 3 kept
        assert len(projections.unwritten) == 3 and projections.stats.store_dropped == 1
        await projections.apply(events[4:])
        return await store.fetch_user("u")

    user = asyncio.run(scenario())
    assert set(user.seen) == {"i1", "i2", "i3", "i4"}
    assert projections.stats.as_dict()["store_dropped"] == 1
