"""The evaluation harness's own metrics, splits and EASE (benchmarks/protocols.py)."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

HARNESS = Path(__file__).resolve().parent.parent / "benchmarks" / "protocols.py"


@pytest.fixture(scope="module")
def protocols():
    spec = importlib.util.spec_from_file_location("rankly_protocols_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def make_data(protocols, user, item, ts):
    user, item, ts = (np.asarray(a) for a in (user, item, ts))
    n_users, n_items = int(user.max()) + 1, int(item.max()) + 1
    return protocols.Data(
        user.astype(np.int32), item.astype(np.int32), ts.astype(np.int64),
        np.array([str(u) for u in range(n_users)]), np.array([str(i) for i in range(n_items)]),
        np.arange(n_items), np.array(["g"] * n_items), Path("x"), Path("y"))


def test_ndcg_counts_hits_by_rank_over_the_ideal_of_min_k_targets(protocols):
    assert protocols.ndcg_at_k([5, 1, 2], {5}) == 1.0
    assert protocols.ndcg_at_k([1, 5], {5}) == pytest.approx(1 / math.log2(3))
    # two targets: the ideal puts both on top
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert protocols.ndcg_at_k([9, 5, 8], {5, 7}) == pytest.approx(expected)
    # 12 targets: the ideal has only 10 slots, so a full list of hits scores 1
    assert protocols.ndcg_at_k(list(range(10)), set(range(12))) == pytest.approx(1.0)
    assert protocols.ndcg_at_k([], {1}) == 0.0


def test_recall_divides_hits_by_min_k_targets(protocols):
    assert protocols.recall_at_k([1, 2, 3], {2, 4}) == 0.5
    assert protocols.recall_at_k(list(range(10)), set(range(20))) == 1.0
    assert protocols.recall_at_k(list(range(10, 20)), {0}) == 0.0


def test_intra_list_diversity_is_the_share_of_pairs_of_different_genres(protocols):
    genre = np.array(["a", "a", "b", "c"])
    assert protocols.intra_list_diversity([0, 1], genre) == 0.0
    assert protocols.intra_list_diversity([0, 2, 3], genre) == 1.0
    assert protocols.intra_list_diversity([0, 1, 2], genre) == pytest.approx(2 / 3)
    assert protocols.intra_list_diversity([0], genre) == 0.0


def test_coverage_is_distinct_recommended_items_over_the_train_catalog(protocols):
    out = protocols.score_lists([[0, 1], [1, 2]], [np.array([0]), np.array([9])], 8,
                                np.array(["g"] * 10))
    assert out["coverage"] == 3 / 8
    assert out["ndcg"] == 0.5 and out["recall"] == 0.5 and out["users"] == 2


def test_random_split_holds_out_a_fifth_of_each_eligible_user(protocols):
    # user 0: 10 interactions, user 1: 4 (too few to be tested)
    user = [0] * 10 + [1] * 4
    item = list(range(10)) + list(range(4))
    data = make_data(protocols, user, item, range(14))
    split = protocols.random_split(data, seed=3)
    assert split.test_users.tolist() == [0]
    assert len(split.targets[0]) == 2
    train_items = set(split.train.item[split.train.user == 0].tolist())
    assert not train_items & set(split.targets[0].tolist())
    assert len(split.train.user) == 12
    again = protocols.random_split(data, seed=3)
    assert again.targets[0].tolist() == split.targets[0].tolist()


def test_loo_holds_out_the_latest_item_ties_to_the_highest_id(protocols):
    user = [0] * 5 + [1] * 5
    item = [4, 3, 2, 1, 0, 0, 1, 2, 3, 4]
    ts = [1, 2, 3, 9, 9, 5, 4, 3, 2, 1]
    split = protocols.loo_split(make_data(protocols, user, item, ts))
    assert split.test_users.tolist() == [0, 1]
    assert [t.tolist() for t in split.targets] == [[1], [0]]


def test_temporal_split_keeps_warm_users_and_unseen_items(protocols):
    # timestamps 0..9, so the 80% quantile is 7.2: ts 8 and 9 are test
    user = [0, 0, 0, 0, 1, 1, 1, 1, 2, 0]
    item = [0, 1, 2, 3, 0, 1, 2, 3, 1, 4]
    data = make_data(protocols, user, item, range(10))
    split = protocols.temporal_split(data)
    assert len(split.train.user) == 8
    # user 2 has no train history; user 0's item 4 is new to them
    assert split.test_users.tolist() == [0]
    assert split.targets[0].tolist() == [4]


def test_ease_dual_form_matches_the_closed_form(protocols):
    rng = np.random.default_rng(0)
    for m, n in ((20, 40), (40, 20)):
        x = sp.random(m, n, density=0.3, random_state=1, format="csr", dtype=np.float32)
        x.data[:] = rng.random(x.nnz)
        xq = x[[0, 5, 7]]
        g = (x.T @ x).toarray().astype(np.float64)
        for lam, scores in zip((1.0, 30.0), protocols.ease_scores(x, xq, [1.0, 30.0]),
                               strict=True):
            p = np.linalg.inv(g + lam * np.eye(n))
            b = -p / np.diag(p)
            np.fill_diagonal(b, 0.0)
            np.testing.assert_allclose(scores, xq.toarray() @ b, atol=1e-5)


def test_top_k_excludes_seen_and_unknown_items_and_breaks_ties_by_index(protocols):
    scores = np.array([[5.0, 5.0, 9.0, 1.0, 5.0]], dtype=np.float32)
    seen = sp.csr_matrix(np.array([[0, 0, 1, 0, 0]]))
    allowed = np.array([True, True, True, True, False])
    assert protocols.top_k(scores, seen, allowed, k=3).tolist() == [[0, 1, 3]]
    assert protocols.top_k(scores, seen, allowed, k=5).tolist() == [[0, 1, 3, -1, -1]]


def _cell(protocols, variant, protocol, seed, ndcgs):
    """A cell as run_cell writes it: peers with their tuning, rankly with its checks."""
    def result(model, v):
        extra = ({"fallback_lines": 0, "seen_items_returned": 0, "train_seconds": 1.0}
                 if model in protocols.RANKLY_MODELS else
                 {"config": {}, "tune_seconds": 0.0, "fit_seconds": 0.0})
        return {"ndcg": v, "recall": v, "coverage": 0.1, "diversity": 0.5, **extra}
    return {"variant": variant, "protocol": protocol, "seed": seed, "test_users": 10,
            "models": {m: result(m, v) for m, v in ndcgs.items()}}


def test_the_report_sets_matched_rankly_against_the_best_peer_too(protocols):
    cells = [
        _cell(protocols, "v", "random", 0, {"ease": 0.40, "rankly": 0.38,
                                            "rankly-matched": 0.40}),
        _cell(protocols, "v", "loo", None, {"ease": 0.040, "als": 0.050, "rankly": 0.045,
                                            "rankly-matched": 0.075}),
    ]
    rows = protocols.report_rows(cells)
    summ = protocols.summary(rows)
    assert summ["min_ratio"] == pytest.approx(0.9) and summ["min_matched_ratio"] == 1.0
    assert summ["mean_matched_ratio"] == pytest.approx(1.25)
    meta = {"started": "t", "command": "c", "seconds": 1.0, "machine": "m",
            "load_average_end": (0.0, 0.0, 0.0)}
    text = protocols.markdown(rows, ["rankly", "rankly-matched"], summ, meta)
    assert "| matched / best |" in text and "| 1.50x |" in text
    assert "min 1.00x, mean 1.25x" in text
    assert protocols.MATCHED_VALIDATION == {"random": "random", "loo": "last",
                                            "temporal": "temporal"}


def test_rankly_is_trained_with_the_validation_and_environment_asked_for(protocols, tmp_path):
    """Through the CLI: ``--validation last`` leaves one validation shape in the manifest's
    blend metrics, and ``env`` reaches the command."""
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(60), 12)
    item = np.concatenate([rng.choice(40, 12, replace=False) for _ in range(60)])
    ts = 1_000_000 + np.arange(user.size) * 600
    items_file = tmp_path / "movies.csv"
    items_file.write_text("movieId,title,genres\n"
                          + "".join(f"{i},Movie {i},G{i % 4}\n" for i in range(40)))
    data = protocols.Data(
        user.astype(np.int32), item.astype(np.int32), ts.astype(np.int64),
        np.array([str(u) for u in range(60)]), np.array([str(i) for i in range(40)]),
        np.arange(40), np.array([f"G{i % 4}" for i in range(40)]), tmp_path, items_file)
    split = protocols.random_split(data, 0)
    result = protocols.evaluate_rankly(split, validation="last")
    assert "error" not in result, result.get("error")
    assert set(result["blend"]["validation_ndcg"]) == {"last"}
    assert set(result["blend"]["plain_ndcg"]) == {"last"}
    assert result["fallback_lines"] == 0 and result["seen_items_returned"] == 0
    # a criterion the blend does not know fails training, and the error names it
    refused = protocols.evaluate_rankly(split, env={"RANKLY_PLUGINS__BLEND__CRITERION": "x"})
    assert "criterion must be one of" in refused["error"]


def test_the_report_command_names_the_rankly_settings_it_ran_with(protocols, monkeypatch):
    """Settings given through the environment reach every `rankly` command, so the report's
    command line must carry them to be reproducible."""
    for key in [k for k in os.environ if k.startswith("RANKLY_")]:
        monkeypatch.delenv(key)  # CI sets some of its own
    monkeypatch.setenv("RANKLY_PLUGINS__BLEND__MIXES", "[]")
    monkeypatch.setenv("RANKLY_PLUGINS__BLEND__CRITERION", "a b")
    monkeypatch.setenv("NOT_RANKLY", "x")
    assert protocols.rankly_environment() == ["RANKLY_PLUGINS__BLEND__CRITERION='a b'",
                                              "RANKLY_PLUGINS__BLEND__MIXES='[]'"]
