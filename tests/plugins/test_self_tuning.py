"""Trainers that choose their own hyper-parameters on hold-outs of the training data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankly.engine.config import load_settings
from rankly.engine.offline.demo import synthesize
from rankly.engine.offline.interactions import build_training_data
from rankly.engine.offline.training import train
from rankly.plugins.models import itemknn


@pytest.fixture(scope="module")
def data():
    interactions, items = synthesize(n_users=250, n_items=160, seed=11)
    return build_training_data(interactions, items)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), small=st.integers(1, 30), extra=st.integers(0, 40))
def test_truncated_neighbour_lists_are_the_smaller_fit(seed, small, extra):
    """Keeping the first m entries of each row of the M-neighbour matrix is the m-neighbour
    matrix itself, ties included, so one similarity computation serves the whole grid."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    x = sp.csr_matrix((rng.random((60, 40)) < 0.15).astype(np.float32))
    full = itemknn.neighbours(x, small + extra, 2.0)
    want = itemknn.neighbours(x, small, 2.0)
    got = itemknn.truncate(full, small)
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.data, want.data)


def test_itemknn_chooses_its_neighbour_count_on_a_hold_out_and_reports_it(data):
    part = itemknn.ItemKNNTrainer().fit(data, {"neighbour_grid": [5, 20, 80]})
    m, tried, users = itemknn.tune_neighbours(data, [5, 20, 80], 10.0, 0.5, "random", 0, 2000,
                                              itemknn.MAX_HISTORY)
    assert users > 0 and set(tried) == {5, 20, 80}
    assert part.params["neighbours"] == m == max(tried, key=lambda g: (tried[g], -g))
    report = "\n".join(part.metrics["report"])
    assert "neighbours on the random hold-out" in report and f"-> {m}" in report
    # the served lists hold at most the chosen count per item
    assert np.diff(part.arrays["indptr"]).max() <= m


def test_the_dense_and_sparse_tuning_paths_score_the_counts_alike(data):
    """A small catalog's counts are scored by the compiled dense gather, a large one's by a
    sparse product: the same NDCG per count either way."""
    dense = itemknn.tune_neighbours(data, [5, 20, 80], 10.0, 0.5, "random", 0, 2000,
                                    itemknn.MAX_HISTORY)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(itemknn, "DENSE_MAX_ITEMS", 0)
        sparse = itemknn.tune_neighbours(data, [5, 20, 80], 10.0, 0.5, "random", 0, 2000,
                                         itemknn.MAX_HISTORY)
    assert dense[0] == sparse[0] and dense[2] == sparse[2]
    assert dense[1] == pytest.approx(sparse[1], abs=1e-6)


def test_an_explicit_neighbour_count_is_not_tuned(data):
    part = itemknn.ItemKNNTrainer().fit(data, {"neighbours": 7})
    assert part.params["neighbours"] == 7 and "report" not in part.metrics
    with pytest.raises(ValueError, match="validation must be one of"):
        itemknn.ItemKNNTrainer().fit(data, {"validation": "sideways"})


def test_the_validation_flag_reaches_every_trainer_that_validates(data):
    parts = train(data, ("blend", "ease", "itemknn"), load_settings(environ={}),
                  validation="last")
    blend = next(p for p in parts if p.name == "blend")
    knn = next(p for p in parts if p.name == "itemknn")
    assert blend.params["shapes"] == ["last"]
    assert "neighbours on the last hold-out" in "\n".join(knn.metrics["report"])
    # an explicit per-trainer option still wins over the flag
    parts = train(data, ("itemknn",), load_settings(environ={}),
                  {"itemknn": {"validation": "temporal"}}, validation="last")
    knn = next(p for p in parts if p.name == "itemknn")
    assert "neighbours on the temporal hold-out" in "\n".join(knn.metrics["report"])


def test_als_chooses_factors_regularization_and_alpha_on_a_hold_out(data):
    from rankly.plugins.models import als

    trainer = als.ALSTrainer()
    part = trainer.fit(data, {"iterations": 3})
    chosen, tried, users = als.tune(data, als.fit_implicit,
                                    {**als.DEFAULTS, "iterations": 3, "seed": 0}, "random", 0,
                                    2000)
    assert users > 0 and len(tried) <= 5
    assert {k: part.params[k] for k in ("factors", "regularization", "alpha")} == \
        {k: chosen[k] for k in ("factors", "regularization", "alpha")}
    assert tried[(chosen["factors"], chosen["regularization"], chosen["alpha"])] == \
        max(tried.values())
    assert "on the random hold-out" in part.metrics["report"][0]
    # any of the three given: nothing is tuned
    fixed = trainer.fit(data, {"iterations": 3, "factors": 8})
    assert fixed.params["factors"] == 8 and not fixed.metrics
    assert fixed.params["regularization"] == als.DEFAULTS["regularization"]


def test_the_tuning_options_are_valid_settings_for_every_component():
    """``[plugins.als] validation`` and ``[plugins.itemknn] neighbour_grid`` are declared by
    the components that share the section, so strict settings accept them."""
    from rankly.engine.plugins import collect, make_plugin_manager

    pm = make_plugin_manager(True, ())
    for kind in ("trainers", "scorers", "candidate_generators"):
        reg = collect(pm, kind)
        for name, keys in (("als", {"validation", "max_users"}),
                           ("itemknn", {"validation", "neighbour_grid"})):
            if name in reg.entries:
                assert keys <= set(reg.options[name] or {}), (kind, name)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), m=st.integers(0, 12), shrink=st.sampled_from([0.0, 2.0]))
def test_neighbour_lists_follow_the_formula_ties_to_the_lower_item(seed, m, shrink):
    """Each row keeps its m largest ``c_ij / (n_i^a n_j^(1-a) + shrink)`` over items that
    co-occur, by similarity desc then the lower item index (small binary data: many ties)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    dense = (rng.random((30, 18)) < 0.2).astype(np.float32)
    got = itemknn.neighbours(sp.csr_matrix(dense), m, shrink, 0.5)
    with pytest.MonkeyPatch.context() as patch:  # the sparse path gives the same lists
        patch.setattr(itemknn, "DENSE_MAX_ITEMS", 0)
        sparse = itemknn.neighbours(sp.csr_matrix(dense), m, shrink, 0.5)
    for a, b in ((got.indptr, sparse.indptr), (got.indices, sparse.indices),
                 (got.data, sparse.data)):
        np.testing.assert_array_equal(a, b)
    co = dense.T @ dense
    np.fill_diagonal(co, 0)
    n = dense.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):  # items nobody touched: never read
        sim = (co / (np.sqrt(n)[:, None] * np.sqrt(n)[None, :] + shrink)).astype(np.float32)
    for i in range(18):
        cols = np.flatnonzero(co[i] > 0)
        order = cols[np.lexsort((cols, -sim[i, cols]))][:m]
        lo, hi = got.indptr[i], got.indptr[i + 1]
        np.testing.assert_array_equal(got.indices[lo:hi], order)
        np.testing.assert_allclose(got.data[lo:hi], sim[i, order], rtol=1e-6)


def test_judging_with_a_diversity_cap_needs_the_categories(data):
    from rankly.plugins.models import holdouts

    hold = holdouts.make_holdout(data, "random", 0.2, 100, 0)
    scores = np.random.default_rng(0).random((hold.rows.size, data.n_items)).astype(np.float32)
    with pytest.raises(ValueError, match="needs the items' categories"):
        holdouts.judge(scores.copy(), hold, 10, cap=2)
    assert holdouts.judge(scores, hold, 10).ndcg >= 0.0
