"""The fused path (one catalog scorer, one top-k) gives the lists of the chain it replaces."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from rankly.engine import hookimpl, pipeline
from rankly.engine.pipeline import stages
from rankly.engine.plugins import make_plugin_manager
from rankly.engine.runtime import build_runtime
from rankly.engine.types import RecommendationRequest


@pytest.fixture(scope="module")
def runtime(model, tmp_path_factory):
    from rankly.engine.config import load_settings

    settings = load_settings(environ={}, artifacts=model.path,
                             data_dir=str(tmp_path_factory.mktemp("fused")),
                             cache={"tiers": []}, deadlines={"request_ms": 30_000,
                                                             "stage_ms": 30_000})
    return build_runtime(settings, model)


def select_both(rt, req):
    """(fused ranking, chain ranking, the fused trace) for one request, the default plan."""
    plan = pipeline.default_plan(rt)
    comps = rt.components
    out = []
    for path in ("fused", "chain"):
        trace = pipeline.Trace()
        user = asyncio.run(pipeline.fetch_features(rt, comps.model, req, trace))
        if path == "chain":
            trace.skip = "-"  # nothing skipped; and the fused step is not tried
            depth = max(req.n * rt.settings.pipeline.rerank_depth, stages.MIN_RERANK_DEPTH)
            pool = stages.chain_pool(rt, comps, req, plan, user, depth, trace)
            out.append(stages.rerank(rt, comps, plan, user, pool, req.n, trace))
        else:
            out.append(pipeline.select(rt, comps, req, plan, user, trace))
            out.append(trace)
    return out[0], out[2], out[1]


def test_the_default_plan_takes_the_fused_path(runtime):
    assert stages.fused_component(runtime.components, pipeline.default_plan(runtime))
    user = str(runtime.components.model.users.user_ids[3])
    _, _, trace = select_both(runtime, RecommendationRequest(user_id=user, n=10))
    assert [s for s, _, _ in trace.stages] == ["features", "fused", "rerank"]


@pytest.mark.parametrize("n", [1, 5, 10, 30])
def test_fused_lists_equal_the_chain_for_every_user(runtime, n):
    model = runtime.components.model
    users = model.users.user_ids.tolist()
    rng = np.random.default_rng(n)
    for user in rng.choice(users, size=60, replace=False).tolist():
        # some requests also exclude a few items the user has not seen
        exclude = tuple(str(i) for i in rng.choice(model.catalog.item_ids, 3).tolist()) \
            if rng.random() < 0.5 else ()
        req = RecommendationRequest(user_id=str(user), n=n, exclude=exclude)
        fused, chain, _ = select_both(runtime, req)
        np.testing.assert_array_equal(fused.items, chain.items, err_msg=f"user {user}")
        np.testing.assert_array_equal(fused.scores, chain.scores)
        np.testing.assert_array_equal(fused.reasons, chain.reasons)
        np.testing.assert_array_equal(fused.anchors, chain.anchors)


def test_fused_category_requests_stay_in_their_categories(runtime):
    model = runtime.components.model
    name = model.catalog.category_names[0]
    mask = runtime.components.category_mask((name,))
    user = str(model.users.user_ids[5])
    fused, _, trace = select_both(runtime, RecommendationRequest(user_id=user, n=10,
                                                                 categories=(name,)))
    allowed = mask.copy()
    allowed[model.users.history(model.users.row(user))] = False
    assert len(fused) == min(10, int(allowed.sum())) > 0
    assert allowed[fused.items].all()
    assert ("fused", "blend") in [(s, c) for s, c, _ in trace.stages]


class BrokenCatalogScorer:
    """A catalog scorer whose fused call fails: the request takes the general path."""

    def __init__(self) -> None:
        self.calls = 0

    def catalog_scores(self, user):
        self.calls += 1
        raise RuntimeError("boom")

    def explain(self, user, items):
        raise AssertionError("not reached")

    def generate(self, user, n):
        raise RuntimeError("boom")

    def score(self, user, items):
        raise RuntimeError("boom")


class BrokenPlugin:
    def __init__(self) -> None:
        self.component = BrokenCatalogScorer()

    @hookimpl
    def register_candidate_generators(self, register):
        register("broken-catalog", lambda ctx: self.component)

    @hookimpl
    def register_scorers(self, register):
        register("broken-catalog", lambda ctx: self.component)


def test_a_failing_catalog_scorer_degrades_to_the_chain(model, settings_for):
    plugin = BrokenPlugin()
    settings = settings_for(model.path, cache={"tiers": []},
                            pipeline={"candidates": ("broken-catalog", "popular"),
                                      "scorers": ("broken-catalog", "popular")})
    rt = build_runtime(settings, model, pm=make_plugin_manager(extra=[plugin]))
    user = str(model.users.user_ids[2])
    req = RecommendationRequest(user_id=user, n=10, request_id="t")
    out = asyncio.run(pipeline.rank(rt, req, pipeline.default_plan(rt)))
    assert len(out["items"]) == 10 and out["fallback"] == "plugin_error"
    # the failed fused call counts once; the general path does not ask it again
    assert plugin.component.calls == 1
    seen = set(model.catalog.item_ids[model.users.history(model.users.row(user))].tolist())
    assert not seen & {it["item_id"] for it in out["items"]}


def test_built_in_plans_select_on_the_loop_and_third_party_ones_on_a_thread(model,
                                                                           settings_for):
    plugin = BrokenPlugin()
    rt = build_runtime(settings_for(model.path), model,
                       pm=make_plugin_manager(extra=[plugin]))
    comps, plan = rt.components, pipeline.default_plan(rt)
    assert pipeline.inline(rt, comps, plan)  # blend, popular, ease, diversity: all built in
    custom = pipeline.Plan(("broken-catalog", "popular"), ("broken-catalog",), plan.rerankers)
    assert not pipeline.inline(rt, comps, custom)
    for mode, expected in (("always", True), ("never", False)):
        forced = build_runtime(settings_for(model.path, pipeline={"inline_selection": mode}),
                               model, pm=make_plugin_manager(extra=[BrokenPlugin()]))
        assert pipeline.inline(forced, forced.components, custom) is expected
        assert pipeline.inline(forced, forced.components, plan) is expected


def test_an_unknown_inline_mode_is_refused(model, settings_for):
    from rankly.engine.config import ConfigError

    with pytest.raises(ConfigError, match="pipeline.inline_selection must be one of"):
        settings_for(model.path, pipeline={"inline_selection": "sometimes"})
