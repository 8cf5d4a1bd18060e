"""Counting served slates' impressions per slate gives exactly what the per-event path gives."""

from __future__ import annotations

import asyncio

import pytest

from rankly.engine.config import load_settings
from rankly.engine.events.log import ImpressionSlate
from rankly.engine.events.projections import Projections
from rankly.engine.storage.memory_store import MemoryStore


class Catalog:  # the one attribute the counters read when items have no weight
    index = {"a": 0, "b": 1}
    categories = [0, 0]
    category_names = ["c"]


SLATES = [ImpressionSlate(1000.0 + n, f"r{n}", f"u{n % 3}", ("a", "b", "zz")[: n % 4], {})
          for n in range(20)]


@pytest.mark.parametrize("event_types", [{}, {"impression": 0.5}])
def test_count_impressions_equals_applying_each_impression(event_types):
    settings = load_settings(environ={}, event_types=event_types)
    per_slate = Projections(settings, MemoryStore(), lambda: Catalog(), count_users=True)
    per_event = Projections(settings, MemoryStore(), lambda: Catalog(), count_users=True)
    per_slate.count_impressions(SLATES)
    asyncio.run(per_event.apply([e for s in SLATES for e in s.events()], users=False))
    assert per_slate.stats.as_dict() == per_event.stats.as_dict()
    assert per_slate.stats.users == per_event.stats.users
    assert per_slate.stats.by_type["impression"] == sum(len(s.item_ids) for s in SLATES)
    assert per_slate.stats.unknown_items == per_event.stats.unknown_items > 0
    assert per_slate.popularity.values == per_event.popularity.values
    assert bool(per_slate.popularity.values) == bool(event_types)  # weighted: counted


def test_a_servers_projections_keep_no_user_ids():
    """A serving process counts events, not distinct users: a set of every user id it ever
    saw would grow without bound (``rankly replay`` asks for it)."""
    serving = Projections(load_settings(environ={}), MemoryStore(), lambda: Catalog())
    asyncio.run(serving.apply([e for s in SLATES for e in s.events()], users=False))
    serving.count_impressions(SLATES)
    assert not serving.stats.users
    assert serving.stats.events == 2 * sum(len(s.item_ids) for s in SLATES)
