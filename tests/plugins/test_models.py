"""Each model plugin: fit and serve on a small synthetic set, and on MovieLens 100K if present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from rankly.engine.config import Settings
from rankly.engine.offline import datasets, evaluation
from rankly.engine.offline.interactions import Interactions, build_training_data
from rankly.engine.plugins import ComponentContext, collect, make_plugin_manager
from rankly.engine.types import Reason, UserFeatures
from rankly.plugins.models import als, ease, itemknn, popularity
from rankly.plugins.scorers import blend

SHARED = Path(os.environ.get("RANKLY_DATASETS")
              or Path(__file__).resolve().parents[2] / "../shared/datasets").resolve()
PLUGINS = (popularity, itemknn, ease, als, blend)


@pytest.fixture(scope="module")
def data():
    """Two disjoint taste clusters of 20 items; users touch 10 items of their cluster."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(80):
        base = 20 * (u % 2)
        for t, i in enumerate(rng.choice(20, 10, replace=False) + base):
            rows.append((f"u{u}", f"i{i:02d}", t * 100 + u))
    us, its, ts = zip(*rows, strict=True)
    return build_training_data(Interactions(np.array(us), np.array(its),
                                            np.ones(len(rows), np.float32), np.array(ts)))


@pytest.fixture(scope="module")
def model(data):
    pm = make_plugin_manager(load_entrypoints=False, extra=PLUGINS)
    parts = evaluation.train_parts(
        data, [("pop", {}), ("itemknn", {}), ("ease", {}),
               ("als", {"backend": "numpy", "factors": 4, "iterations": 5}),
               ("blend", {"validation": "last"})], pm, Settings())
    return evaluation.in_memory_model(data, parts), pm


def _component(model, kind, name, options=None):
    m, pm = model
    factory = collect(pm, kind).get(name)
    return factory(ComponentContext(name, m, options or {}, Settings()))


def _user(data, items):
    h = np.asarray([data.catalog.index[i] for i in items], dtype=np.int64)
    return UserFeatures(None, -1, h, np.unique(h))


@pytest.mark.parametrize("name", ["itemknn", "ease", "als"])
def test_generator_stays_in_the_users_cluster_and_skips_seen(model, data, name):
    gen = _component(model, "candidate_generators", name)
    user = _user(data, ["i01", "i02", "i03"])
    cands = gen.generate(user, 5)
    assert len(cands) == 5
    assert all(int(data.catalog.item_ids[i][1:]) < 20 for i in cands.items)
    assert not set(cands.items.tolist()) & set(user.seen.tolist())


@pytest.mark.parametrize("name", ["itemknn", "ease", "als", "blend", "popular"])
def test_scorer_returns_finite_float32_per_item(model, data, name):
    scorer = _component(model, "scorers", name)
    items = np.arange(data.n_items, dtype=np.int64)
    for user in (_user(data, ["i01", "i05"]), UserFeatures("u0", 0, data.users.history(0),
                                                           np.unique(data.users.history(0)))):
        s = scorer.score(user, items)
        assert s.dtype == np.float32 and s.shape == items.shape and np.isfinite(s).all()
    in_cluster = scorer.score(_user(data, ["i01", "i05"]), items)
    if name != "popular":
        assert in_cluster[:20].mean() > in_cluster[20:].mean()


def test_itemknn_anchor_is_the_history_item_that_contributed_most(model, data):
    gen = _component(model, "candidate_generators", "itemknn")
    user = _user(data, ["i01", "i25"])  # one item from each cluster
    cands = gen.generate(user, 10)
    assert (cands.reasons == Reason.BECAUSE_YOU_LIKED).all()
    for item, anchor in zip(cands.items.tolist(), cands.anchors.tolist(), strict=True):
        same_cluster = data.catalog.index["i01"] if item < 20 else data.catalog.index["i25"]
        assert anchor == same_cluster


@pytest.mark.parametrize("name", ["ease", "als"])
def test_ease_and_als_anchor_candidates_on_the_closest_history_item(model, data, name):
    gen = _component(model, "candidate_generators", name)
    user = _user(data, ["i01", "i25"])  # one item from each cluster
    cands = gen.generate(user, 10)
    liked = cands.reasons == Reason.BECAUSE_YOU_LIKED
    assert liked.any()
    for item, anchor in zip(cands.items[liked].tolist(), cands.anchors[liked].tolist(),
                            strict=True):
        same_cluster = data.catalog.index["i01"] if item < 20 else data.catalog.index["i25"]
        assert anchor == same_cluster
    assert (cands.anchors[~liked] == -1).all()


def test_ease_anchor_is_the_argmax_of_the_weight_rows(model, data):
    gen = _component(model, "candidate_generators", "ease")
    user = _user(data, ["i01", "i02", "i07"])
    cands = gen.generate(user, 5)
    h = np.sort(user.history)
    rows = gen.weights[gen.pos[h]][:, gen.pos[cands.items]]
    assert cands.anchors.tolist() == h[np.argmax(rows, axis=0)].tolist()


def test_als_known_user_without_history_keeps_for_you(model, data):
    gen = _component(model, "candidate_generators", "als")
    cands = gen.generate(UserFeatures("u0", 0, np.empty(0, np.int64), np.empty(0, np.int64)), 4)
    assert len(cands) == 4 and (cands.reasons == Reason.FOR_YOU).all()
    assert (cands.anchors == -1).all()


def test_itemknn_similar_and_session(model, data):
    scorer = _component(model, "scorers", "itemknn")
    idx, sims = scorer.similar(data.catalog.index["i03"], 5)
    assert idx.size == 5 and (np.diff(sims) <= 0).all() and (idx < 20).all()
    assert data.catalog.index["i03"] not in idx.tolist()
    m, _ = model
    assert itemknn.similar_items(m, 3, 4)[0].tolist() == scorer.similar(3, 4)[0].tolist()
    session = itemknn.session_recommendations(m, [data.catalog.index["i30"]], 3)
    assert (session.reasons == Reason.SIMILAR_TO).all() and (session.items >= 20).all()


def test_als_folds_in_an_unknown_user_close_to_a_known_one(model, data):
    scorer = _component(model, "scorers", "als")
    known = UserFeatures("u0", 0, data.users.history(0), np.unique(data.users.history(0)))
    folded = UserFeatures(None, -1, known.history, known.seen)
    a, b = scorer.user_vector(known), scorer.user_vector(folded)
    assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.9


def test_components_are_none_when_the_model_lacks_their_part(data):
    pm = make_plugin_manager(load_entrypoints=False, extra=PLUGINS)
    parts = evaluation.train_parts(data, [("pop", {})], pm, Settings())
    only_pop = (evaluation.in_memory_model(data, parts), pm)
    for name in ("itemknn", "ease", "als", "blend"):
        assert _component(only_pop, "scorers", name) is None


def test_numpy_and_implicit_als_rank_alike(data):
    pytest.importorskip("implicit")
    a = als.ALSTrainer().fit(data, {"backend": "numpy", "iterations": 5, "factors": 4})
    b = als.ALSTrainer().fit(data, {"backend": "implicit", "iterations": 5, "factors": 4})
    for part in (a, b):
        s = part.arrays["user_factors"][0] @ part.arrays["item_factors"].T
        assert s[:20].mean() > s[20:].mean()  # u0 is in the first cluster


def test_ease_refuses_a_catalog_above_its_limit(data):
    with pytest.raises(ValueError, match="max_items"):
        ease.EaseTrainer().fit(data, {"max_items": 10})


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "ml-100k" / "u.data").exists(),
                    reason=f"licensed MovieLens 100K not present under {SHARED}")
def test_every_model_beats_popularity_on_ml100k_user_last():
    pm = make_plugin_manager(load_entrypoints=False, extra=PLUGINS)
    report = evaluation.evaluate(datasets.load(SHARED / "ml-100k"), "user-last",
                                 ["pop", "itemknn", "ease", "als"], pm=pm)
    ndcg = {r["model"]: r["warm"]["ndcg"] for r in report["results"]}
    assert all(ndcg[m] > ndcg["pop"] for m in ("itemknn", "ease", "als"))
