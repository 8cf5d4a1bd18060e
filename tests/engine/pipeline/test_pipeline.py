"""The request path end to end on a real (small) model, including every failure mode."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from rankly.engine import hookimpl, pipeline
from rankly.engine.pipeline import cache as caching
from rankly.engine.plugins import make_plugin_manager
from rankly.engine.runtime import build_runtime
from rankly.engine.types import Candidates, Reason, RecommendationRequest, UserFeatures


class FaultyPlugin:
    """Scorers and generators that misbehave in every documented way."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    @hookimpl
    def register_scorers(self, register):
        plugin = self

        class Scorer:
            def __init__(self, name, fn):
                self.name, self.fn = name, fn

            def score(self, user, items):
                plugin._count(self.name)
                return self.fn(items)

        def boom(items):
            raise RuntimeError("scorer exploded")

        def hang(items):
            time.sleep(3)
            return np.zeros(items.size, np.float32)

        register("boom", lambda ctx: Scorer("boom", boom))
        register("nan", lambda ctx: Scorer("nan", lambda i: np.full(i.size, np.nan, np.float32)))
        register("inf", lambda ctx: Scorer("inf", lambda i: np.full(i.size, np.inf, np.float32)))
        register("short", lambda ctx: Scorer("short", lambda i: np.zeros(max(i.size - 1, 0))))
        register("hang", lambda ctx: Scorer("hang", hang))
        register("by-index", lambda ctx: Scorer("by-index", lambda i: -i.astype(np.float32)))

        def slow(items):
            time.sleep(0.08)  # under the stage budget: a valid, cacheable answer, only late
            return -items.astype(np.float32)

        register("slow", lambda ctx: Scorer("slow", slow))

    @hookimpl
    def register_candidate_generators(self, register):
        class Garbage:
            def generate(self, user, n):
                return Candidates.of(np.array([-5, 0, 1, 10**9, 2]), Reason.POPULAR)

        register("garbage", lambda ctx: Garbage())


@pytest.fixture
def faulty():
    return FaultyPlugin()


@pytest.fixture
def runtime(model, faulty, settings_for):
    settings = settings_for(model.path, deadlines={"request_ms": 300})
    pm = make_plugin_manager(extra=[faulty])
    return build_runtime(settings, model, pm=pm)


def rank(rt, plan=None, **fields):
    fields.setdefault("n", 10)
    req = RecommendationRequest(request_id="t", **fields)
    return asyncio.run(pipeline.rank(rt, req, plan or pipeline.default_plan(rt)))


def plan_with(rt, **changes):
    base = pipeline.default_plan(rt)
    return pipeline.Plan(changes.get("candidates", base.candidates),
                         changes.get("scorers", base.scorers),
                         changes.get("rerankers", base.rerankers))


def ids(resp):
    return [it["item_id"] for it in resp["items"]]


def history_ids(model, user_id):
    return set(model.catalog.item_ids[model.users.history(model.users.row(user_id))].tolist())


def test_known_user_gets_personalized_items_with_reasons(runtime, model):
    resp = rank(runtime, user_id="1")
    assert resp["fallback"] is None
    assert len(resp["items"]) == 10
    assert all(it["reasons"] and all(isinstance(r, str) and r for r in it["reasons"])
               for it in resp["items"])
    assert any(r.startswith("Because you liked ") for it in resp["items"] for r in it["reasons"])
    scores = [it["score"] for it in resp["items"]]
    assert all(np.isfinite(scores))


def test_seen_items_are_never_recommended(runtime, model):
    resp = rank(runtime, user_id="1", n=50)
    assert not set(ids(resp)) & history_ids(model, "1")


def test_explicit_exclude_is_honoured(runtime):
    first = ids(rank(runtime, user_id="2"))
    again = ids(rank(runtime, user_id="2", exclude=tuple(first[:3])))
    assert not set(first[:3]) & set(again)


def test_category_filter_keeps_only_requested_categories(runtime, model):
    cat = model.catalog.category_names[0]
    resp = rank(runtime, user_id="3", categories=(cat,))
    assert resp["items"]
    cats = {model.catalog.category_name(model.catalog.categories[model.catalog.index[i]])
            for i in ids(resp)}
    assert cats == {cat}


def test_cold_user_gets_popular_items(runtime, model):
    resp = rank(runtime, plan_with(runtime, rerankers=()), user_id="never-seen", n=5)
    assert resp["fallback"] == "cold_start"
    pop = model.part("pop")["scores"]
    expected = model.catalog.item_ids[np.argsort(-pop, kind="stable")[:5]].tolist()
    assert ids(resp) == expected
    assert all(it["reasons"] == ["Popular"] for it in resp["items"])


def test_cold_user_by_category_gets_trending_in_category(runtime, model):
    cat = model.catalog.category_names[1]
    resp = rank(runtime, user_id="never-seen", n=5, categories=(cat,))
    assert [it["reasons"] for it in resp["items"]] == [[f"Trending in {cat}"]] * 5


def test_anonymous_session_gets_similar_items(runtime, model):
    resp = rank(runtime, user_id=None, session_items=("1", "2"), n=5)
    assert len(resp["items"]) == 5
    assert not {"1", "2"} & set(ids(resp))
    assert any(r.startswith("Similar to ") for it in resp["items"] for r in it["reasons"])


@pytest.mark.parametrize("bad", ["boom", "nan", "inf", "short"])
def test_bad_scorer_falls_back_to_next_scorer(runtime, bad):
    good = rank(runtime, plan_with(runtime, scorers=("by-index",)), user_id="4")
    resp = rank(runtime, plan_with(runtime, scorers=(bad, "by-index")), user_id="4")
    assert resp["fallback"] == "plugin_error"
    assert ids(resp) == ids(good)
    assert all(np.isfinite(it["score"]) for it in resp["items"])


def test_all_scorers_failing_serves_fallback_scores(runtime):
    resp = rank(runtime, plan_with(runtime, scorers=("boom",)), user_id="5")
    assert resp["fallback"] == "plugin_error"
    assert len(resp["items"]) == 10


def test_generator_returning_unknown_ids_is_cleaned(runtime, model):
    resp = rank(runtime, plan_with(runtime, candidates=("garbage",), rerankers=()),
                user_id="never", session_items=("400",), n=10)
    assert resp["fallback"] == "plugin_error"
    assert set(ids(resp)) <= set(model.catalog.item_ids.tolist())
    assert len(ids(resp)) == len(set(ids(resp))) == 10


def test_hanging_scorer_is_cut_off_at_the_deadline(runtime):
    start = time.perf_counter()
    resp = rank(runtime, plan_with(runtime, scorers=("hang", "by-index")), user_id="6")
    assert time.perf_counter() - start < 2.0  # the scorer sleeps 3 s
    assert resp["fallback"] == "plugin_timeout"
    assert len(resp["items"]) == 10


def test_failing_scorer_is_disabled_after_five_failures(runtime, faulty):
    plan = plan_with(runtime, scorers=("boom", "by-index"))
    for u in range(8):
        rank(runtime, plan, user_id=str(10 + u))
    assert faulty.calls["boom"] == 5
    assert runtime.breakers["boom"].state == "open"


def test_second_identical_request_is_served_from_cache(runtime):
    first = rank(runtime, user_id="7")
    second = rank(runtime, user_id="7")
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["items"] == second["items"]


def test_concurrent_misses_on_one_key_compute_once(runtime):
    async def burst():
        req = RecommendationRequest(user_id="8", n=10, request_id="x")
        plan = pipeline.default_plan(runtime)
        return await asyncio.gather(*(pipeline.rank(runtime, req, plan) for _ in range(50)))

    before = runtime.flights.computations
    results = asyncio.run(burst())
    assert runtime.flights.computations - before == 1
    assert len({tuple(ids(r)) for r in results}) == 1


@pytest.mark.parametrize("user", ["9", "cold-user"])
def test_slate_honours_the_configured_diversity_cap(model, faulty, settings_for, user):
    settings = settings_for(model.path, plugins={"diversity": {"cap": 3}})
    rt = build_runtime(settings, model, pm=make_plugin_manager(extra=[faulty]))
    resp = rank(rt, user_id=user, n=10)
    cats = [int(model.catalog.categories[model.catalog.index[i]]) for i in ids(resp)]
    assert max(np.bincount(cats)) <= 3


def test_the_default_diversity_cap_is_the_one_training_validated(runtime, model):
    chosen = model.params("blend")["serving_options"]["diversity"]["cap"]
    assert runtime.components.rerankers["diversity"].cap == chosen


def test_past_the_deadline_the_fallback_is_served_and_the_answer_still_lands(runtime, model):
    plan = plan_with(runtime, scorers=("slow",))
    req = RecommendationRequest(user_id="9", n=10, request_id="late")

    async def late_then_cached():
        loop = asyncio.get_running_loop()
        start = loop.time()
        late = await pipeline.rank(runtime, req, plan, deadline=start + 0.02)
        waited = loop.time() - start
        while len(runtime.flights._inflight):
            await asyncio.sleep(0.01)
        return late, waited, await pipeline.rank(runtime, req, plan)

    before = runtime.flights.computations
    late, waited, then = asyncio.run(late_then_cached())
    assert late["fallback"] == "deadline" and late["cached"] is False
    assert waited < 0.07  # answered at the deadline, not when the 80 ms scorer finished
    assert len(late["items"]) == 10 and not set(ids(late)) & history_ids(model, "9")
    assert all(it["reasons"] == ["Popular"] for it in late["items"])
    assert then["cached"] is True and then["fallback"] is None  # the computation carried on
    assert runtime.flights.computations - before == 1


def test_a_hanging_cache_tier_cannot_hold_the_request(runtime):
    class Frozen:
        async def get(self, key, user_id):
            await asyncio.sleep(30)

        async def set(self, key, user_id, value):
            await asyncio.sleep(30)

    runtime.caches.insert(0, ("frozen", Frozen()))
    start = time.perf_counter()
    resp = rank(runtime, user_id="1")
    assert time.perf_counter() - start < 1.0  # the request deadline is 300 ms here
    assert resp["fallback"] == "deadline"
    assert len(resp["items"]) == 10


def test_background_refreshes_run_a_bounded_number_at_once_and_each_key_once(runtime):
    running, peak = 0, 0

    async def recompute():
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return {}

    async def expire_many():
        for n in range(20):
            caching.refresh_behind(runtime, f"stale-{n}", recompute)
            caching.refresh_behind(runtime, f"stale-{n}", recompute)  # queued: not again
        while caching._refreshing:
            await asyncio.sleep(0.005)

    before = runtime.flights.computations
    asyncio.run(expire_many())
    assert peak == runtime.settings.cache.max_background_refreshes == 2
    assert runtime.flights.computations - before == 20
    assert not caching._queued


def test_warm_up_computes_off_the_record(runtime, faulty):
    before = runtime.flights.computations
    took = asyncio.run(pipeline.warm_up(runtime))
    assert took > 0
    assert runtime.flights.computations == before  # no flight, nothing cached
    assert all(len(cache) == 0 for _, cache in runtime.caches if hasattr(cache, "__len__"))
    assert set(runtime.breakers.states().values()) <= {"closed"}


def test_warm_up_survives_a_broken_pipeline(model, settings_for, faulty):
    settings = settings_for(model.path,
                            pipeline={"scorers": ("boom",), "candidates": ("garbage",)})
    rt = build_runtime(settings, model, pm=make_plugin_manager(extra=[faulty]))
    assert asyncio.run(pipeline.warm_up(rt)) > 0
    assert faulty.calls["boom"] == 1  # it really ran the plan
    assert set(rt.breakers.states().values()) <= {"closed"}  # and failures were not counted


# --- invalidation = "revalidate": dirty entries served minus what the user has seen since ----


def purchase(rt, user_id, item_id):
    """What the events service does for a purchase: project it, then invalidate the user."""
    async def go():
        await rt.store.record_interaction(user_id, item_id, seen=True)
        for _, cache in rt.caches:
            await cache.invalidate_user(user_id)
    asyncio.run(go())


def test_cached_answers_carry_spare_items_ranked_after_the_slate(model, faulty, settings_for):
    runtime = build_runtime(settings_for(model.path, plugins={"diversity": {"cap": 3}}), model,
                            pm=make_plugin_manager(extra=[faulty]))
    first = rank(runtime, user_id="21")
    entry = asyncio.run(runtime.caches[0][1].get(
        pipeline.cache_key(RecommendationRequest(user_id="21", n=10, request_id="t"),
                           pipeline.default_plan(runtime), model.version), "21"))
    spare = [it["item_id"] for it in entry[caching.SPARE_FIELD]]
    assert len(spare) == runtime.settings.cache.spare_items == 5
    assert not set(spare) & set(ids(first)) and not set(spare) & history_ids(model, "21")
    # the diversity cap (3 per category) holds over the slate and its spares together
    cats = [int(model.catalog.categories[model.catalog.index[i]]) for i in ids(first) + spare]
    assert max(np.bincount(cats)) <= 3
    assert caching.SPARE_FIELD not in first


def test_a_purchase_of_a_slate_item_is_served_topped_up_then_recomputed_behind(runtime):
    first = rank(runtime, user_id="22")
    bought = ids(first)[2]
    before = runtime.flights.computations
    purchase(runtime, "22", bought)

    async def after_purchase():
        req = RecommendationRequest(user_id="22", n=10, request_id="t")
        got = await pipeline.rank(runtime, req, pipeline.default_plan(runtime))
        while caching._refreshing:  # the key recomputes behind the served answer
            await asyncio.sleep(0.005)
        return got, await pipeline.rank(runtime, req, pipeline.default_plan(runtime))

    served, then = asyncio.run(after_purchase())
    assert served["cached"] is True and bought not in ids(served)
    assert ids(served)[:9] == [i for i in ids(first) if i != bought]
    assert runtime.flights.computations - before == 1  # the background recompute
    assert then["cached"] is True and bought not in ids(then) and len(then["items"]) == 10
    cache = runtime.caches[0][1]
    assert not cache._dirty  # the recompute's set() cleared the mark


def test_a_dirty_answer_without_enough_spares_is_recomputed_on_the_request(runtime):
    first = rank(runtime, user_id="23")
    for item in ids(first)[:6]:  # more than the 5 spares can replace
        purchase(runtime, "23", item)
    again = rank(runtime, user_id="23")
    assert again["cached"] is False
    assert not set(ids(again)) & set(ids(first)[:6]) and len(again["items"]) == 10


def test_a_dirty_answer_is_served_as_it_is_when_the_store_cannot_be_read(runtime):
    # the store holds what the user has seen since: no answer can leave it out now, and the
    # store_down fallback would not be personalized either
    first = rank(runtime, user_id="24")
    purchase(runtime, "24", ids(first)[0])

    async def down(user_id):
        raise caching.StoreUnavailable("down")

    runtime.store.fetch_user = down
    again = rank(runtime, user_id="24")
    assert again["cached"] is True and ids(again) == ids(first)
    assert again["fallback"] is None


def test_invalidation_drop_makes_the_next_request_compute(model, settings_for):
    settings = settings_for(model.path, cache={"invalidation": "drop"})
    rt = build_runtime(settings, model)
    first = rank(rt, user_id="25")
    purchase(rt, "25", ids(first)[0])
    again = rank(rt, user_id="25")
    assert again["cached"] is False and ids(first)[0] not in ids(again)


def test_an_answer_computed_across_a_purchase_is_stored_dirty(runtime):
    # the "slow" scorer takes 80 ms: the purchase lands while the answer is being computed
    plan = plan_with(runtime, scorers=("slow",))
    req = RecommendationRequest(user_id="26", n=10, request_id="race")
    first = rank(runtime, plan, user_id="26")
    bought = ids(first)[0]
    cache = runtime.caches[0][1]
    asyncio.run(cache.clear())

    async def race():
        computing = asyncio.create_task(pipeline.rank(runtime, req, plan))
        await asyncio.sleep(0.03)
        await runtime.store.record_interaction("26", bought, seen=True)
        await cache.invalidate_user("26")
        stale = await computing  # computed from the state before the purchase
        after = await pipeline.rank(runtime, req, plan)
        while caching._refreshing:
            await asyncio.sleep(0.005)
        return stale, after

    stale, after = asyncio.run(race())
    assert bought in ids(stale)  # answered before the purchase was known: fine
    assert after["cached"] is True and bought not in ids(after)  # never served again
    assert len(after["items"]) == 10


def test_the_default_pipeline_serves_the_blend_top_k_over_the_whole_catalog(model, faulty,
                                                                          settings_for):
    """The blend's own generator plus the blend scorer give exactly the top-k of the blend's
    catalog-wide scores minus the seen items (no cap configured, none validated)."""
    from rankly._fast import reference
    from rankly.plugins.scorers import blend

    settings = settings_for(model.path, plugins={"diversity": {"cap": None}},
                            cache={"tiers": []})
    rt = build_runtime(settings, model, pm=make_plugin_manager(extra=[faulty]))
    scorer = blend.build(model)
    for user in ("3", "17", "120"):
        row = model.users.row(user)
        hist = model.users.history(row)
        gate = scorer.gate(UserFeatures(user, row, hist, np.unique(hist)))
        want, _ = reference.topk(scorer.full_scores(hist, gate), 10, exclude=np.unique(hist))
        assert ids(rank(rt, user_id=user, n=10)) == model.catalog.item_ids[want].tolist()
