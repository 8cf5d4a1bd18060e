"""The served default model: its formula, hold-outs, selection rule and trainer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankly._fast import reference
from rankly.engine.config import load_settings
from rankly.engine.offline.demo import synthesize
from rankly.engine.offline.evaluation import in_memory_model
from rankly.engine.offline.interactions import Interactions, build_training_data
from rankly.engine.offline.training import train
from rankly.engine.types import Reason, UserFeatures
from rankly.plugins.models import ease, linear
from rankly.plugins.scorers import blend


@pytest.fixture(scope="module")
def data():
    interactions, items = synthesize(n_users=200, n_items=150, seed=5)
    return build_training_data(interactions, items)


@pytest.fixture(scope="module")
def parts(data):
    return train(data, ("pop", "blend", "ease", "itemknn"), load_settings(environ={}))


@pytest.fixture(scope="module")
def model(data, parts):
    return in_memory_model(data, parts)


def test_history_weights_decay_from_the_newest_item():
    w = blend.history_weights(4, 0.5, 1.0)
    np.testing.assert_allclose(w, [1.0, 0.75, 0.625, 0.5625])
    np.testing.assert_array_equal(blend.history_weights(3, 0.0, 5.0), np.ones(3))


@given(st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=50))
@settings(max_examples=60, deadline=None)
def test_znorm_rows_standardizes_or_zeroes_a_constant_row(values):
    x = np.array(values, dtype=np.float32)
    z = blend.znorm_rows(x.copy())
    if np.ptp(x.astype(np.float64)) < 1e-3:
        assert np.all(np.abs(z) < 1e-3) or np.isclose(z.std(), 1.0, atol=1e-2)
    else:
        assert abs(float(z.mean())) < 1e-3 and abs(float(z.std()) - 1.0) < 1e-2
        order = np.argsort(x, kind="stable")
        assert np.all(np.diff(z[order]) >= -1e-5)  # the order of the scores is kept


def _events(rows):
    us, its, ts = zip(*rows, strict=True)
    return build_training_data(Interactions(np.array(us), np.array(its),
                                            np.ones(len(rows), np.float32), np.array(ts)))


def test_holdout_shapes_take_what_their_protocol_holds_out():
    rows = [(f"u{u}", f"i{i}", 100 * u + i) for u in range(4) for i in range(10)]
    rows += [("short", "i1", 5), ("short", "i2", 6)]  # too few events to hold any out
    d = _events(rows)
    last = blend.holdout_mask(d, "last")
    assert last.sum() == 4
    assert set(d.item_idx[last].tolist()) == {d.catalog.index["i9"]}
    rnd = blend.holdout_mask(d, "random", 0.2, seed=1)
    counts = np.bincount(d.user_idx[rnd], minlength=d.n_users)
    assert [counts[d.users.row(f"u{u}")] for u in range(4)] == [2, 2, 2, 2]
    assert not rnd[d.user_idx == d.users.row("short")].any()
    temporal = blend.holdout_mask(d, "temporal", 0.25)
    assert d.timestamps[temporal].min() >= d.timestamps[~temporal].max()
    with pytest.raises(ValueError, match="shape"):
        blend.holdout_mask(d, "user-last")


@pytest.mark.parametrize("cap", [0, 1, 2, 3])
def test_apply_cap_matches_the_diversity_kernel_reference(cap):
    rng = np.random.default_rng(cap)
    scores = rng.normal(size=(30, 40)).astype(np.float32)
    cats = rng.integers(-1, 4, 40)
    top = np.argsort(-scores, axis=1, kind="stable")
    got = blend.apply_cap(top, cats, 10, cap)
    for row, picked in zip(scores, got, strict=True):
        want, _, _ = reference.diverse_topk(row, cats.astype(np.int32), 10, cap)
        np.testing.assert_array_equal(picked, want)


def test_judge_scores_ndcg_as_defined_and_never_ranks_seen_items(data):
    hold = blend.make_holdout(data, "random", 0.2, 50, 0)
    rng = np.random.default_rng(0)
    scores = rng.random((hold.rows.size, data.n_items)).astype(np.float32)
    expected_top = []
    for r in range(hold.rows.size):
        s = scores[r].copy()
        s[hold.train.users.history(hold.rows[r])] = -np.inf
        expected_top.append(np.argsort(-s, kind="stable")[:10])
    out = blend.judge(scores.copy(), hold, 10, None, data.catalog.categories)
    disc = 1 / np.log2(np.arange(2, 12))
    for r, top in enumerate(expected_top):
        targets = hold.targets[r].indices
        dcg = (np.isin(top, targets) * disc).sum()
        assert out.per_user[r] == pytest.approx(dcg / disc[:min(10, targets.size)].sum())
    assert 0 < out.coverage <= 1 and 0 <= out.personalization <= 1


def _outcome(ndcg, per_user=None, coverage=0.2, personalization=0.9):
    per_user = np.full(400, ndcg) if per_user is None else per_user
    return blend.Outcome(float(np.mean(per_user)), per_user, coverage, personalization)


def test_selection_refuses_a_candidate_that_is_worse_on_one_shape():
    rng = np.random.default_rng(0)
    base_r = rng.random(400)
    search = blend.Search(("random", "last"), max_loss=0.002, degenerate_margin=0.1)
    plain, timely = blend.BlendParams(), blend.BlendParams(mix=1.0, half_life=1.0)
    search.results[plain] = {"random": _outcome(0, base_r), "last": _outcome(0.05)}
    # a big gain on "last" does not buy a clear loss on "random"
    search.results[timely] = {"random": _outcome(0, base_r * 0.95), "last": _outcome(0.08)}
    assert search.value(timely) == -np.inf
    small = blend.BlendParams(mix=0.15, half_life=3.0)
    search.results[small] = {"random": _outcome(0, base_r), "last": _outcome(0.055)}
    assert search.value(small) > search.value(plain) == 0.0


def test_selection_refuses_a_degenerate_candidate_unless_it_wins_every_shape_clearly():
    search = blend.Search(("random", "last"), max_loss=0.002, degenerate_margin=0.1)
    plain, pop = blend.BlendParams(), blend.BlendParams(pop_weight=5.0)
    search.results[plain] = {"random": _outcome(0.3), "last": _outcome(0.05)}
    search.results[pop] = {"random": _outcome(0.31, personalization=0.1),
                           "last": _outcome(0.06, personalization=0.1)}
    assert search.degenerate(pop) and search.value(pop) == -np.inf
    search.results[pop] = {"random": _outcome(0.4, personalization=0.1),
                           "last": _outcome(0.06, personalization=0.1)}
    assert search.value(pop) > 0


def test_transition_matrix_counts_what_came_next_within_the_window():
    d = _events([("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("v", "a", 1), ("v", "b", 2)])
    t = blend.transition_matrix(d, window=2, shrink=0.0).toarray()
    a, b, c = (d.catalog.index[x] for x in "abc")
    # a -> b twice (weight 1 each), a -> c once two steps later (weight 0.5)
    assert t[a, b] == pytest.approx(2 / 2.5) and t[a, c] == pytest.approx(0.5 / 2.5)
    assert t[b, c] == pytest.approx(1.0) and t[c].sum() == 0


def test_scorer_scores_follow_the_formula(model):
    scorer = blend.build(model)
    p = model.params("blend")
    hist = model.users.history(3)
    e = model.part("ease")
    pos = np.full(len(model.catalog), -1)
    pos[e["items"]] = np.arange(e["items"].size)
    h = hist[pos[hist] >= 0]
    w = blend.history_weights(hist.size, p["mix"], p["half_life"])[pos[hist] >= 0]
    rows = np.zeros(len(model.catalog), np.float32)
    rows[e["items"]] = w @ e["weights"][pos[h]]
    want = blend.znorm_rows(rows) + (p["pop_weight"] + blend.TIE_BREAK) * model.part(
        "blend")["popularity_z"]
    if p["seq_weight"]:
        want += p["seq_weight"] * blend.znorm_rows(scorer.seq.rows(hist))
    np.testing.assert_allclose(scorer.full_scores(hist), want, rtol=1e-4, atol=1e-5)


def test_generator_returns_the_top_unseen_items_with_history_anchors(model):
    scorer = blend.build(model)
    hist = model.users.history(7)
    user = UserFeatures("u", 7, hist, np.unique(hist))
    cands = scorer.generate(user, 20)
    want, _ = reference.topk(scorer.full_scores(hist), 20, exclude=user.seen)
    np.testing.assert_array_equal(cands.items, want)
    because = cands.reasons == int(Reason.BECAUSE_YOU_LIKED)
    assert because.any() and np.isin(cands.anchors[because], hist).all()


def test_training_applies_the_tuned_ease_options_and_explicit_settings_win(data, parts):
    chosen = next(p for p in parts if p.name == "blend").params["tuned_options"]["ease"]
    served = next(p for p in parts if p.name == "ease").params
    assert served["lambda"] == chosen["lambda"] and served["dropout"] == chosen["dropout"]
    assert min(blend.LAMBDAS) <= chosen["lambda"] <= max(blend.LAMBDAS) * max(
        blend.LAMBDA_SCALES)
    assert chosen["dropout"] in blend.DROPOUTS
    mine = train(data, ("blend", "ease"), load_settings(environ={}),
                 {"ease": {"lambda": 77.0}})
    assert next(p for p in mine if p.name == "ease").params["lambda"] == 77.0


def test_training_report_says_what_was_chosen_and_why(parts):
    part = next(p for p in parts if p.name == "blend")
    text = "\n".join(part.metrics["report"])
    assert f"hold-outs: random ({blend.RANDOM_FOLDS} x" in text and "last" in text
    assert "temporal" in text
    assert "lambda" in text and "validation NDCG@10 chosen vs plain" in text
    assert "personalization" in text and "coverage" in text
    assert set(part.metrics["validation_ndcg"]) == {"random", "last", "temporal"}


def test_single_shape_validation_and_bad_names(data):
    part = blend.BlendTrainer().fit(data, {"validation": "last"})
    assert part.params["shapes"] == ["last"]
    with pytest.raises(ValueError, match="validation must be one of"):
        blend.BlendTrainer().fit(data, {"validation": "user-last"})


def test_temporal_validation_searches_the_age_decay_of_training_pairs(data, monkeypatch):
    """``--validation temporal`` tries the age half-lives of TEMPORAL_AGE_HALF_LIVES that fit
    in the data's span (one EASE fit each); robust validation tries none unless asked, and
    an explicit ``age_half_lives`` wins."""
    fitted: list[float] = []
    fit = blend.BlendTrainer._ease_base

    def spy(train, lam, dropout, max_items, age_half_life_days=0.0, bound=0.0):
        fitted.append(age_half_life_days)
        return fit(train, lam, dropout, max_items, age_half_life_days, bound)

    monkeypatch.setattr(blend.BlendTrainer, "_ease_base", staticmethod(spy))
    span = float(np.ptp(data.timestamps)) / 86_400
    inside = {d for d in blend.TEMPORAL_AGE_HALF_LIVES if d <= span}
    assert inside, "the synthetic data must span at least one half-life"

    def ages(options):
        fitted.clear()
        blend.BlendTrainer().fit(data, options)
        return set(fitted) - {0.0}

    assert ages({"validation": "temporal"}) == inside
    assert ages({"validation": "robust"}) == set()
    assert ages({"validation": "temporal", "age_half_lives": []}) == set()
    assert ages({"validation": "last", "age_half_lives": [30]}) == {30.0}


def test_ease_dropout_regularizes_popular_items_harder():
    rng = np.random.default_rng(0)
    x = (rng.random((300, 30)) < np.linspace(0.05, 0.6, 30)).astype(np.float32)
    g = x.T @ x
    plain = ease.item_weights(g, 10.0, 0.0)
    p = np.linalg.inv(g.astype(np.float64) + 10 * np.eye(30))
    want = p / -np.diag(p)
    np.fill_diagonal(want, 0)
    np.testing.assert_allclose(plain, want, rtol=1e-3, atol=1e-6)
    dropped = ease.item_weights(g, 10.0, 0.5)
    assert np.abs(dropped[-1]).sum() < np.abs(plain[-1]).sum()
    with pytest.raises(ValueError, match="dropout"):
        ease.item_weights(g, 10.0, 1.0)


def test_the_validated_diversity_cap_is_the_served_default_and_settings_win(data, parts):
    from rankly.engine.runtime import build_runtime

    model = in_memory_model(data, parts)
    chosen = model.params("blend")["serving_options"]["diversity"]["cap"]
    assert chosen is None or chosen in blend.DIVERSITY_CAPS
    rt = build_runtime(load_settings(environ={}, artifacts="unused"), model)
    assert rt.components.rerankers["diversity"].cap == chosen
    pinned = load_settings(environ={}, artifacts="unused", plugins={"diversity": {"cap": 2}})
    assert build_runtime(pinned, model).components.rerankers["diversity"].cap == 2


def test_popularity_gate_fades_for_users_inactive_at_training_and_not_for_active_ones():
    rows = [("old", "a", 0), ("old", "b", 86400), ("new", "a", 100 * 86400),
            ("new", "c", 101 * 86400)]
    d = _events(rows)
    g = blend.user_gate(d, 30.0)
    assert g[d.users.row("new")] == pytest.approx(1.0)
    assert g[d.users.row("old")] == pytest.approx(2 ** (-100 / 30), rel=1e-4)
    params = blend.BlendParams(pop_weight=1.0, pop_gate_days=30.0)
    base = ease.EaseScorer(np.arange(3), np.zeros((3, 3), np.float32), 3)
    scorer = blend.BlendScorer(base, params, np.ones(3, np.float32), None, g,
                               np.diff(d.users.history_indptr))
    old = d.users.row("old")
    hist = d.users.history(old)
    assert scorer.gate(UserFeatures("old", old, hist, np.unique(hist))) == pytest.approx(g[old])
    # an event since training: the user is active now and gets the whole term
    more = np.concatenate([[d.catalog.index["c"]], hist])
    assert scorer.gate(UserFeatures("old", old, more, np.unique(more))) == 1.0
    assert scorer.gate(UserFeatures(None, -1, hist, np.unique(hist))) == 1.0


def test_too_little_data_to_validate_serves_the_plain_model(tmp_path):
    d = _events([("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 3), ("u2", "c", 4)])
    parts = train(d, ("pop", "blend", "ease"), load_settings(environ={}))
    part = next(p for p in parts if p.name == "blend")
    assert part.params["mix"] == 0 and part.params["pop_weight"] == 0
    assert "no validation users" in part.metrics["report"][0]
    scorer = blend.build(in_memory_model(d, parts))
    hist = np.array([d.catalog.index["a"]])
    assert scorer.generate(UserFeatures("u", -1, hist, hist), 2).items.size == 2


def test_a_request_computes_the_users_row_once_for_generator_and_scorer(model, monkeypatch):
    scorer = blend.build(model)
    calls = []
    compute = scorer._scores
    monkeypatch.setattr(scorer, "_scores", lambda *a: calls.append(1) or compute(*a))
    hist = model.users.history(5)
    user = UserFeatures("u", 5, hist, np.unique(hist))
    cands = scorer.generate(user, 20)
    np.testing.assert_array_equal(scorer.score(user, cands.items),
                                  scorer.full_scores(hist, scorer.gate(user))[cands.items])
    assert len(calls) == 2  # generate + score share one row; full_scores is the second
    other = UserFeatures("u", 5, hist.copy(), np.unique(hist))
    scorer.score(other, cands.items)
    assert len(calls) == 3  # another request's history is computed afresh


def test_minimax_picks_the_best_worst_shape_ratio():
    search = blend.Search(("random", "last"), max_loss=0.002, degenerate_margin=0.1,
                          criterion="minimax")
    plain = blend.BlendParams()
    mild, heavy = blend.BlendParams(mix=0.15, half_life=2.0), blend.BlendParams(mix=0.6,
                                                                                  half_life=2.0)
    search.results[plain] = {"random": _outcome(0.40), "last": _outcome(0.040)}
    search.results[mild] = {"random": _outcome(0.39), "last": _outcome(0.048)}
    search.results[heavy] = {"random": _outcome(0.30), "last": _outcome(0.050)}
    # worst-shape ratios to each shape's best: plain 0.80 (last), mild 0.96, heavy 0.75
    assert max(search.results, key=search.value) == mild
    # the non-inferiority rule refuses both time-aware candidates (each loses on random)
    strict = blend.Search(("random", "last"), 0.002, 0.1, criterion="noninferior",
                          results=search.results)
    assert max(strict.results, key=strict.value) == plain


def test_the_report_names_what_each_shape_alone_would_have_chosen(data, monkeypatch):
    search = blend.Search(("random", "last"), max_loss=0.01, degenerate_margin=0.1)
    plain = blend.BlendParams()
    mild = blend.BlendParams(mix=0.15, half_life=2.0)
    nexty = blend.BlendParams(mix=0.6, half_life=2.0, seq_weight=0.4)
    same = blend.BlendParams(pop_weight=0.1)
    search.results[plain] = {"random": _outcome(0.40), "last": _outcome(0.040)}
    search.results[mild] = {"random": _outcome(0.40), "last": _outcome(0.042)}
    search.results[nexty] = {"random": _outcome(0.30), "last": _outcome(0.060)}
    # a degenerate list wins "last" outright but is never offered
    search.results[same] = {"random": _outcome(0.30, personalization=0.1),
                            "last": _outcome(0.090, personalization=0.1)}
    chosen = max(search.results, key=search.value)
    assert chosen == mild
    assert search.given_up(chosen) == {"last": nexty}  # random: nothing beats mild there
    assert search.given_up(chosen, min_gain=0.6) == {}
    single = blend.Search(("last",), 0.01, 0.1, results={
        c: {"last": o["last"]} for c, o in search.results.items()})
    assert single.given_up(mild) == {}  # one shape: the choice is that shape's own
    # through training: with any gain shown, every shape names its own best candidate
    monkeypatch.setattr(blend, "SHAPE_GAIN_SHOWN", -1.0)
    part = blend.BlendTrainer().fit(data, {})
    report = "\n".join(part.metrics["report"])
    assert set(part.metrics["given_up"]) == set(part.params["shapes"])
    for shape, scores in part.metrics["given_up"].items():
        assert f"best on {shape} of the candidates tried" in report
        assert scores[shape] >= part.metrics["validation_ndcg"][shape]


def test_ease_training_pairs_decay_with_age():
    # user u saw a long ago and b recently, v saw a and c recently: with decay, a weighs less
    day = 86_400
    d = _events([("u", "a", 0), ("u", "b", 400 * day), ("v", "a", 400 * day - 1),
                 ("v", "c", 400 * day), ("w", "b", 399 * day), ("w", "c", 400 * day)])
    plain, factor0 = ease.decayed_matrix(d, 0.0)
    decayed, factor = ease.decayed_matrix(d, 100.0)
    assert factor0 == 1.0 and 0 < factor < 1
    u, a = d.users.index["u"], d.catalog.index["a"]
    assert plain[u, a] == 1.0 and decayed[u, a] == pytest.approx(2.0 ** -4, rel=1e-4)
    assert decayed.max() == pytest.approx(1.0)
    parts = {h: ease.EaseTrainer().fit(d, {"lambda": 1.0, "age_half_life_days": h})
             for h in (0.0, 100.0)}
    assert parts[100.0].params["age_half_life_days"] == 100.0
    assert not np.allclose(parts[0.0].arrays["weights"], parts[100.0].arrays["weights"])


def test_hold_outs_fitted_side_by_side_choose_what_one_thread_chooses(data, parts):
    """The trainer works on hold-outs in parallel threads; the choice, its validation scores
    and the served arrays are the same as with one thread."""
    threaded = next(p for p in parts if p.name == "blend")
    single = blend.BlendTrainer().fit(data, {"threads": 1})
    for key in ("mix", "half_life", "seq_weight", "pop_weight", "tuned_options",
                "serving_options"):
        assert threaded.params[key] == single.params[key], key
    assert threaded.metrics["validation_ndcg"] == single.metrics["validation_ndcg"]
    assert threaded.metrics["candidates"] == single.metrics["candidates"]
    assert threaded.arrays.keys() == single.arrays.keys()
    for name, array in single.arrays.items():
        np.testing.assert_array_equal(threaded.arrays[name], array)


def test_the_ease_walk_stops_at_the_best_neighbour(data):
    """The lambda walk (two fits per round) ends on a grid lambda no tried neighbour beats;
    the served lambda is the smoothed peak between that one's neighbours, and the dropout
    walk at it ends on a dropout no tried neighbour beats."""
    part = blend.BlendTrainer().fit(data, {"threads": 2})
    line = next(t for t in part.metrics["report"] if t.startswith("ease on the first"))
    tried = {}
    for entry in line.split(": ", 1)[1].split(" -> ")[0].split(", "):
        pair, value = entry.rsplit(": ", 1)
        _, lam, _, dropout = pair.split()
        tried[(float(lam), float(dropout))] = float(value)
    on_grid = {lam: v for (lam, d), v in tried.items()
               if d == blend.DROPOUT_START and lam in blend.LAMBDAS}
    best = max(on_grid, key=on_grid.get)
    i = blend.LAMBDAS.index(best)
    for j in (i - 1, i + 1):
        if 0 <= j < len(blend.LAMBDAS) and blend.LAMBDAS[j] in on_grid:
            assert on_grid[blend.LAMBDAS[j]] <= on_grid[best]
    chosen = part.params["tuned_options"]["ease"]
    lam, dropout = chosen["lambda"], chosen["dropout"]
    assert blend.LAMBDAS[max(i - 1, 0)] <= lam <= blend.LAMBDAS[min(i + 1, len(blend.LAMBDAS) - 1)]
    # (the report rounds the scores, which moves the vertex a little)
    assert lam == pytest.approx(blend.smoothed_peak(
        blend.LAMBDAS, i, [on_grid.get(v) for v in blend.LAMBDAS]), rel=0.02)
    assert f"-> lambda {lam:g}, dropout {dropout:g}" in line
    j = blend.DROPOUTS.index(dropout)
    for d in (j - 1, j + 1):
        pair = (round(lam, 6), blend.DROPOUTS[d]) if 0 <= d < len(blend.DROPOUTS) else None
        near = {(round(k[0], 6), k[1]): v for k, v in tried.items()}
        if pair in near and (round(lam, 6), dropout) in near:
            assert near[pair] <= near[(round(lam, 6), dropout)]


@settings(max_examples=50, deadline=None)
@given(peak=st.floats(-1.0, 1.0), curvature=st.floats(0.01, 5.0), at=st.integers(1, 3))
def test_the_smoothed_peak_is_the_parabolas_vertex_between_the_neighbours(peak, curvature,
                                                                          at):
    """Scores on an exact parabola in log(value) give back its vertex when it lies between
    the best point's neighbours, else the nearer neighbour; edges and convex triples keep the
    grid point."""
    grid = (62.5, 125.0, 250.0, 500.0, 1000.0)
    x0 = np.log(grid[at]) + peak * np.log(2.0)
    scores = [1.0 - curvature * (np.log(g) - x0) ** 2 for g in grid]
    got = blend.smoothed_peak(grid, at, scores)
    want = float(np.clip(np.exp(x0), grid[at - 1], grid[at + 1]))
    assert got == pytest.approx(want, rel=1e-6)
    assert blend.smoothed_peak(grid, 0, scores) == grid[0]
    assert blend.smoothed_peak(grid, 4, scores) == grid[4]
    assert blend.smoothed_peak(grid, at, [None if k == at + 1 else v
                                          for k, v in enumerate(scores)]) == grid[at]
    assert blend.smoothed_peak(grid, at, [-v for v in scores]) == grid[at]


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 600), lam=st.floats(1.0, 500.0), dropout=st.sampled_from([0.0, 0.3]),
       bound=st.sampled_from([0.0, 0.2, 0.6]), seed=st.integers(0, 2**16))
def test_ease_weights_match_the_closed_form_at_any_size(n, lam, dropout, bound, seed):
    """The Cholesky inverse, its blockwise mirroring and the column scaling give the
    closed forms: EASE/EDLAE B = I - P diag(1/diag(P)), and with a diagonal bound xi RLAE's
    B = I - P diag(max(L_jj, (1 - xi)/P_jj)) (Moon et al. 2023); zero diagonal, C-contiguous
    float32."""
    x = (np.random.default_rng(seed).random((80, n)) < 0.1).astype(np.float64)
    g = x.T @ x
    b = ease.item_weights(g, lam, dropout, bound)
    reg = np.diag(g) * dropout / (1.0 - dropout) + lam
    p = np.linalg.inv(g + np.diag(reg))
    expected = -p * np.maximum(reg, (1.0 - bound) / np.diag(p))[None, :]
    np.fill_diagonal(expected, 0.0)
    assert b.dtype == np.float32 and b.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(b, expected, rtol=2e-3, atol=2e-5)


def test_the_diagonal_bound_is_validated_and_served_by_ease(data, parts):
    """The blend walks RLAE's diagonal bound on its first hold-out, reports the walk, and
    the served EASE part is trained with the bound it chose."""
    blend_part = next(p for p in parts if p.name == "blend")
    chosen = blend_part.params["tuned_options"]["ease"]["diagonal_bound"]
    assert chosen in blend.DIAGONAL_BOUNDS
    assert next(p for p in parts if p.name == "ease").params["diagonal_bound"] == chosen
    line = next(t for t in blend_part.metrics["report"] if t.startswith("ease diagonal bound"))
    assert line.endswith(f"-> {chosen:g}") and "0: " in line
    # a bound scales EASE's columns by max(L_jj P_jj, 1 - xi): never up, at most 1 - xi down
    g = np.asarray((data.binary_matrix().T @ data.binary_matrix()).todense(), dtype=np.float64)
    plain, leverage = linear.ease_leverage(g, 50.0)
    relaxed = ease.item_weights(g, 50.0, 0.0, 0.4)
    ratio = np.abs(relaxed).sum(axis=0) / np.maximum(np.abs(plain).sum(axis=0), 1e-12)
    assert np.all(ratio <= 1.0 + 1e-5)
    assert np.all(ratio[np.abs(plain).sum(axis=0) > 0] >= 0.6 - 1e-5)
    with pytest.raises(ValueError, match="diagonal_bound"):
        ease.item_weights(g, 50.0, 0.0, 1.0)


@settings(max_examples=25, deadline=None)
@given(users=st.integers(0, 300), n=st.integers(1, 200), density=st.floats(0.0, 0.6),
       weighted=st.booleans(), seed=st.integers(0, 2**16))
def test_gram_is_x_transpose_x_on_its_dense_and_sparse_paths(users, n, density, weighted, seed):
    """Both of :func:`linear.gram`'s products give the exact ``X'X`` (float32, symmetric,
    C-contiguous), whichever one the operation count picks, over blocks of users too."""
    import scipy.sparse as sp

    x = sp.random(users, n, density=density, format="csr", random_state=seed, dtype=np.float32)
    if not weighted:
        x.data[:] = 1.0
    want = (x.T @ x).toarray()
    for cost in (0.0, 1e12):  # sparse always, dense always
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(linear, "_GRAM_BLOCK", 64)
            patch.setattr(linear, "_SPARSE_COST", cost)
            got = linear.gram(x)
        assert got.dtype == np.float32 and got.shape == (n, n) and got.flags["C_CONTIGUOUS"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got, got.T)


@settings(max_examples=50, deadline=None)
@given(counts=st.lists(st.integers(0, 30), min_size=1, max_size=40),
       share=st.floats(0.01, 1.0))
def test_items_holding_is_the_fewest_popular_items_that_hold_the_share(counts, share):
    """``items_holding`` counts the most popular items (by users) that together hold at least
    ``share`` of the events, and no fewer: one item less holds less."""
    m = linear.items_holding(np.asarray(counts), share)
    held = np.cumsum(sorted(counts, reverse=True))
    total = held[-1]
    if total == 0:
        assert m == len(counts)
        return
    assert 1 <= m <= len(counts)
    assert held[m - 1] >= share * total - 1e-9 * total
    assert m == 1 or held[m - 2] < share * total
    with pytest.raises(ValueError, match="share"):
        linear.items_holding(np.asarray(counts), 0.0)


def test_validation_fits_keep_the_items_that_hold_the_validation_mass(data):
    """``[plugins.blend] validation_mass`` bounds the items the validation EASE fits keep
    (under ``max_validation_items``), and the training report says how many."""
    counts = np.diff(data.matrix.tocsc().indptr)
    for options, want in (({"validation_mass": 0.5}, linear.items_holding(counts, 0.5)),
                          ({"validation_mass": 1.0, "max_validation_items": 40}, 40)):
        part = next(p for p in train(data, ("blend",), load_settings(environ={}),
                                     {"blend": options}) if p.name == "blend")
        line = next(t for t in part.metrics["report"] if t.startswith("hold-outs"))
        assert f"EASE fitted there on the {want} most popular of {(counts > 0).sum()} items" \
            in line
        assert blend.validation_item_limit(counts, options) == want


@settings(max_examples=25, deadline=None)
@given(users=st.integers(0, 40), n=st.integers(1, 120), seed=st.integers(0, 2**16),
       subset=st.booleans())
def test_ease_scorer_batch_is_the_sum_of_weight_rows_of_each_history(users, n, seed, subset):
    """``EaseScorer.batch`` (the compiled batch gather) equals the dense product of the
    history weights with the weights scattered to catalog positions; history items without a
    weight row add nothing, items without one score 0."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    items = np.sort(rng.choice(n, max(1, n // 2), replace=False)) if subset else np.arange(n)
    weights = rng.standard_normal((items.size, items.size)).astype(np.float32)
    hist = sp.random(users, n, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    full = np.zeros((n, n), np.float32)
    full[np.ix_(items, items)] = weights
    got = linear.EaseScorer(items, weights, n).batch(hist)
    assert got.shape == (users, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, hist.toarray() @ full, rtol=1e-4, atol=1e-4)


def test_ease_scorer_batch_reads_a_shared_unsorted_history_without_changing_it():
    """Validation threads score one history matrix side by side: ``batch`` must only read
    it. Rows in history order (unsorted columns) with a repeated item score as the merged
    matrix does, from several threads at once, and the input's arrays stay as they were."""
    import threading

    import scipy.sparse as sp

    rng = np.random.default_rng(3)
    n, users = 300, 400
    items = np.sort(rng.choice(n, 200, replace=False))
    weights = rng.standard_normal((items.size, items.size)).astype(np.float32)
    rows = [rng.choice(n, rng.integers(1, 40), replace=False) for _ in range(users)]
    rows[0] = np.concatenate([rows[0], rows[0][:1]])  # a repeated item
    indptr = np.concatenate([[0], np.cumsum([r.size for r in rows])])
    indices = np.concatenate(rows)
    data = rng.random(indices.size).astype(np.float32)
    hist = sp.csr_matrix((data, indices, indptr), shape=(users, n))
    before = (hist.indices.copy(), hist.data.copy(), hist.indptr.copy())
    full = np.zeros((n, n), np.float32)
    full[np.ix_(items, items)] = weights
    want = hist.toarray() @ full  # toarray sums the repeated entry
    scorer = linear.EaseScorer(items, weights, n)
    got: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: got.append(scorer.batch(hist)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8
    for g in got:
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-4)
    for a, b in zip(before, (hist.indices, hist.data, hist.indptr), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_low_lambda_share_mixes_two_ease_fits_and_is_validated(data, parts):
    """``low_lambda_share`` a serves ``(1 - a) B(lambda) + a B(f lambda)``; the blend tries
    the shares on every shape, hands the chosen one to the ease part, and says so."""
    trainer = ease.EaseTrainer()
    opts = {"lambda": 300.0, "dropout": 0.25, "diagonal_bound": 0.1}
    one = trainer.fit(data, opts).arrays["weights"]
    low = trainer.fit(data, {**opts, "lambda": 60.0}).arrays["weights"]
    mixed = trainer.fit(data, {**opts, "low_lambda_share": 0.3, "low_lambda_factor": 0.2})
    np.testing.assert_allclose(mixed.arrays["weights"], 0.7 * one + 0.3 * low, rtol=1e-5,
                               atol=1e-6)
    assert mixed.params["low_lambda_share"] == 0.3
    with pytest.raises(ValueError, match="low_lambda_share must be in"):
        trainer.fit(data, {**opts, "low_lambda_share": 1.0})
    shares = (0.3, 0.6)
    mine = train(data, ("blend", "ease"), load_settings(environ={}),
                 {"blend": {"low_lambda_shares": shares, "low_lambda_factor": 0.25}})
    part = next(p for p in mine if p.name == "blend")
    chosen = part.params["tuned_options"]["ease"]
    assert chosen["low_lambda_share"] in (0.0, *shares)
    assert chosen["low_lambda_factor"] == 0.25
    served = next(p for p in mine if p.name == "ease").params
    assert served["low_lambda_share"] == chosen["low_lambda_share"]
    assert served["low_lambda_factor"] == 0.25
    assert "at a smaller lambda" in "\n".join(part.metrics["report"])
    assert part.metrics["candidates"] >= 1 + len(shares)
    # off by default: one fit
    default = next(p for p in parts if p.name == "blend").params["tuned_options"]["ease"]
    assert default["low_lambda_share"] == 0.0


@pytest.mark.parametrize(("value", "want"), [
    ([0.3, 0.6], [0.3, 0.6]), ((1,), [1.0]), (0.5, [0.5]), ("0.3, 0.6", [0.3, 0.6]),
    ("[0.15, 0.3]", [0.15, 0.3]), ("[]", []), ("3", [3.0]),
])
def test_grid_options_read_arrays_numbers_and_environment_strings(value, want):
    assert blend.grid_option({"mixes": value}, "mixes", (9.0,)) == want
    assert blend.grid_option({}, "mixes", (9.0,)) == [9.0]


def test_a_grid_option_that_is_not_numbers_names_its_key():
    with pytest.raises(ValueError, match="mixes must be a list of numbers"):
        blend.grid_option({"mixes": "0.3,abc"}, "mixes", ())


def test_a_history_without_item_item_weights_gets_the_popular_items(tmp_path, capsys):
    # "solo" is only ever seen by "loner", so EASE gives it no neighbours and the item-item
    # row of loner is flat: the served lists must follow popularity (the tie-break), not
    # the catalog's index order
    from rankly.engine import cli

    rng = np.random.default_rng(3)
    lines = ["user_id,item_id,timestamp"]
    for u in range(80):
        # the most popular items have the highest ids, last in the catalog's order
        picks = rng.choice(40, 8, replace=False, p=np.linspace(0.1, 2.0, 40) / 42.0)
        lines += [f"u{u},i{i:02d},{1000 * u + t}" for t, i in enumerate(picks)]
    lines.append("loner,solo,99999")
    (tmp_path / "e.csv").write_text("\n".join(lines) + "\n")
    assert cli.main(["train", "--interactions", str(tmp_path / "e.csv"), "--out",
                     str(tmp_path / "m"), "--quiet"]) == 0
    (tmp_path / "users.txt").write_text("loner\n")
    capsys.readouterr()
    assert cli.main(["recommend", "--artifacts", str(tmp_path / "m"), "--users",
                     str(tmp_path / "users.txt"), "--n", "5", "--quiet"]) == 0
    import json

    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    counts: dict[str, int] = {}
    for line in lines[1:-1]:
        item = line.split(",")[1]
        counts[item] = counts.get(item, 0) + 1
    by_pop = sorted(counts, key=lambda i: (-counts[i], i))
    assert got["fallback"] is None and len(got["items"]) == 5
    # the top of the popularity order (an item tied in count may swap with its twin)
    top = {i for i in by_pop if counts[i] >= counts[by_pop[4]]}
    assert set(got["items"]) <= top, (got["items"], [(i, counts[i]) for i in by_pop[:8]])


@pytest.mark.parametrize("gate", [1.0, 0.5, 0.0])
def test_the_popularity_terms_add_up_at_every_gate(model, gate):
    from dataclasses import replace

    built = blend.build(model)
    pop = model.part("blend")["popularity_z"]
    scorer = blend.BlendScorer(built.base, replace(built.params, pop_weight=0.3, seq_weight=0.0),
                               pop)
    plain = blend.BlendScorer(built.base, replace(built.params, pop_weight=0.0, seq_weight=0.0),
                              None)
    hist = model.users.history(3)
    want = plain.full_scores(hist) + (0.3 * gate + blend.TIE_BREAK) * pop
    np.testing.assert_allclose(scorer.full_scores(hist, gate), want, rtol=1e-5, atol=1e-5)
