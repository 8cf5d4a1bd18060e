"""The learned ranker: `rankly train-ranker` on a simulated log, the `ltr` reranker serving it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from starlette.testclient import TestClient

from rankly.engine import cli
from rankly.engine.config import load_settings
from rankly.engine.feedback.ltr_features import FEATURES
from rankly.engine.feedback.ltr_training import ndcg
from rankly.engine.feedback.slates import load_feedback
from rankly.engine.model import load_model
from rankly.engine.offline.demo import train_shop
from rankly.engine.offline.simulator import Simulator, drive
from rankly.engine.serving.app import create_app

pytest.importorskip("lightgbm")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """Artifacts of its own (train-ranker writes into them), a simulator and a served log:
    1,500 requests with exploration (rate 0.5 over the top 10)."""
    root = tmp_path_factory.mktemp("ltr")
    art = root / "art"
    train_shop(art, 3, n_users=300, n_items=400)
    sim = Simulator.for_model(load_model(art), seed=11)
    settings = load_settings(environ={}, artifacts=art, data_dir=root / "log",
                             exploration={"rate": 0.5, "top_m": 10}, cache={"tiers": []})
    # the exploration's shuffles come from a process-wide generator: seeded, the served
    # log (and every estimate from it) is the same on every run
    from rankly.engine.feedback import exploration
    exploration._rng.seed(7)
    with TestClient(create_app(settings)) as client:
        drive(client, sim, requests=1500, n=10, seed=1)
    return art, sim, root / "log" / "events" / "events.jsonl", root


@pytest.fixture(scope="module")
def trained(shop):
    art, _, events, _ = shop
    before = load_model(art).version
    code = cli.main(["train-ranker", "--events", str(events), "--artifacts", str(art),
                     "--json"])
    assert code == 0
    return before


def true_ctr(art, sim, root, rerankers, requests=1500):
    settings = load_settings(environ={}, artifacts=art, data_dir=root / "-".join(rerankers),
                             cache={"tiers": []}, pipeline={"rerankers": list(rerankers)})
    with TestClient(create_app(settings)) as client:
        result = drive(client, sim, requests=requests, n=10, seed=5)
    return result.expected_clicks / result.impressions, result


@pytest.mark.slow
def test_train_ranker_writes_a_part_and_a_new_version(shop, trained):
    art = shop[0]
    model = load_model(art)
    assert model.version.startswith(trained + "+ltr-")
    assert set(model.part("ltr")) == {"model", "item_ctr", "item_impressions"}
    params = model.params("ltr")
    assert params["features"] == list(FEATURES) and params["bias"] == "position"


@pytest.mark.slow
def test_the_ranker_lifts_the_true_ctr_of_the_default(shop, trained):
    art, sim, _, root = shop
    default, _ = true_ctr(art, sim, root, ("diversity",))
    ranked, result = true_ctr(art, sim, root, ("ltr", "diversity"))
    # the same users in the same order in both arms, so the difference is the rankings'
    assert ranked > default * 1.03, (default, ranked)
    assert result.requests == 1500


@pytest.mark.slow
def test_ltr_keeps_each_items_reason(shop, trained):
    from rankly.engine.api import Ranking, Reason, UserFeatures
    from rankly.plugins.rerankers.ltr import LtrReranker, load_booster

    model = load_model(shop[0])
    rr = LtrReranker(model, load_booster(model), top=30)
    items = np.arange(40, dtype=np.int64)
    reasons = (items % 3).astype(np.int8)
    anchors = items * 10
    ranking = Ranking(items, np.linspace(1, 0, 40).astype(np.float32), reasons, anchors)
    user = UserFeatures("1", 0, model.users.history(0), np.sort(model.users.history(0)))
    out = rr.rerank(user, ranking, 35)
    assert len(out) == 35 and len(set(out.items.tolist())) == 35
    assert (out.anchors == out.items * 10).all() and (out.reasons == out.items % 3).all()
    assert (np.diff(out.scores) <= 0).all()  # descending, for the diversity cap after it
    assert out.items[30:].tolist() == list(range(30, 35))  # past `top`: kept in order
    assert Reason.POPULAR == 0


@pytest.mark.slow
def test_served_answers_with_the_ranker_keep_reasons(shop, trained):
    art = shop[0]
    settings = load_settings(environ={}, artifacts=art, data_dir=shop[3] / "serve",
                             pipeline={"rerankers": ["ltr", "diversity"]})
    with TestClient(create_app(settings)) as client:
        body = client.get("/recommendations", params={"user_id": "5", "n": 10}).json()
    assert body["fallback"] is None and len(body["items"]) == 10
    assert all(it["reasons"] and it["reasons"][0] for it in body["items"])
    assert body["model_version"] == load_model(art).version


def test_ndcg():
    assert ndcg(np.array([1.0, 0.0, 0.0]), 3) == 1.0
    assert ndcg(np.array([0.0, 0.0, 1.0]), 3) == pytest.approx(0.5)
    assert ndcg(np.zeros(3), 3) == 0.0


@pytest.mark.slow
def test_train_ranker_refuses_a_log_without_slates(tmp_path, shop, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"id": "e", "u": "1", "i": "2", "t": "click", "ts": 1.8e9})
                     + "\n")
    assert cli.main(["train-ranker", "--events", str(empty), "--artifacts", str(shop[0])]) == 2
    assert "need at least 10" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.redis
def test_a_ranked_model_publishes_and_serves_from_redis(shop, trained, redis_server,
                                                        redis_namespace, tmp_path):
    import asyncio

    from rankly.engine.storage.publish import publish_version

    art = shop[0]
    settings = load_settings(environ={}, store_url=redis_server.url, namespace=redis_namespace,
                             data_dir=tmp_path, pipeline={"rerankers": ["ltr", "diversity"]},
                             deadlines={"store_ms": 250.0, "request_ms": 2000.0})
    version = asyncio.run(publish_version(settings, art))
    assert version == load_model(art).version and "+ltr-" in version
    with TestClient(create_app(settings)) as client:  # no artifacts: Redis's active version
        body = client.get("/recommendations", params={"user_id": "5", "n": 10}).json()
        ready = client.get("/ready").json()
    assert body["model_version"] == version and body["fallback"] is None
    assert ready["model_version"] == version and "missing_components" not in ready
    local = load_settings(environ={}, artifacts=art, data_dir=tmp_path / "local",
                          pipeline={"rerankers": ["ltr", "diversity"]})
    plain = load_settings(environ={}, artifacts=art, data_dir=tmp_path / "plain")
    with TestClient(create_app(local)) as client:
        ranked = client.get("/recommendations", params={"user_id": "5", "n": 10}).json()
    with TestClient(create_app(plain)) as client:
        default = client.get("/recommendations", params={"user_id": "5", "n": 10}).json()
    ids = [[it["item_id"] for it in b["items"]] for b in (body, ranked, default)]
    assert ids[0] == ids[1] != ids[2]  # the ltr part came through Redis and reranks


@pytest.mark.slow
def test_examination_is_recovered_from_shuffled_slates(shop):
    from rankly.engine.feedback.ltr_training import examination

    feedback = load_feedback(shop[2])
    theta = examination(feedback.slates)
    # the simulator examines position k with probability 1 / (k + 1)
    assert theta[0] == 1.0 and (np.diff(theta) <= 0).all()
    assert theta[1] == pytest.approx(0.5, abs=0.15) and theta[4] == pytest.approx(0.2, abs=0.1)


@pytest.mark.slow
def test_ltr_reranks_the_same_from_many_threads(shop, trained):
    from concurrent.futures import ThreadPoolExecutor

    from rankly.engine.api import Ranking, UserFeatures
    from rankly.plugins.rerankers.ltr import LtrReranker, load_booster

    model = load_model(shop[0])
    rr = LtrReranker(model, load_booster(model), top=30)
    rng = np.random.default_rng(0)
    cases = []
    for row in range(40):
        items = rng.choice(len(model.catalog), 50, replace=False).astype(np.int64)
        ranking = Ranking(items, np.sort(rng.random(50).astype(np.float32))[::-1].copy(),
                          np.zeros(50, np.int8), np.full(50, -1, np.int64))
        h = model.users.history(row)
        cases.append((UserFeatures(str(row), row, h, np.sort(h)), ranking))
    want = [rr.rerank(u, r, 10).items.tolist() for u, r in cases]
    with ThreadPoolExecutor(8) as pool:  # the pipeline's selection runs in worker threads
        got = list(pool.map(lambda c: rr.rerank(c[0], c[1], 10).items.tolist(), cases * 5))
    assert got == want * 5


@pytest.mark.parametrize("args,named", [
    (["--depth", "0"], "argument --depth: must be at least 1, got 0"),
    (["--rounds", "-1"], "argument --rounds: must be at least 1, got -1"),
    (["--valid-share", "1"], "argument --valid-share: must be strictly between 0 and 1"),
    (["--window", "nan"], "argument --window: must be a finite number above 0"),
])
def test_train_ranker_refuses_bad_numbers_naming_the_option(tmp_path, capsys, args, named):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train-ranker", "--events", str(tmp_path / "e.jsonl"), "--artifacts",
                  str(tmp_path), *args])
    assert exc.value.code == 2 and named in capsys.readouterr().err


def test_train_ranker_names_a_missing_event_log(tmp_path, capsys):
    pytest.importorskip("lightgbm")
    missing = tmp_path / "nothing.jsonl"
    assert cli.main(["train-ranker", "--events", str(missing), "--artifacts",
                     str(tmp_path)]) == 2
    assert f"rankly train-ranker: {missing}: No such file or directory" in (
        capsys.readouterr().err)


def test_a_top_that_cannot_reorder_anything_stops_the_start(shop, trained):
    from rankly.engine.runtime import ComponentError, build_runtime

    settings = load_settings(environ={}, artifacts=shop[0], data_dir=shop[3] / "top1",
                             cache={"tiers": []},
                             pipeline={"rerankers": ["ltr", "diversity"]},
                             plugins={"ltr": {"top": 1}})
    with pytest.raises(ComponentError, match="ltr: top must be at least 2"):
        build_runtime(settings, load_model(shop[0]))


def test_a_ranker_of_another_feature_set_stops_the_start(shop, trained, monkeypatch):
    from rankly.engine.runtime import ComponentError, build_runtime
    from rankly.plugins.rerankers import ltr

    monkeypatch.setattr(ltr, "RANKER_FEATURES", (*ltr.RANKER_FEATURES, "a later feature"))
    settings = load_settings(environ={}, artifacts=shop[0], data_dir=shop[3] / "features",
                             cache={"tiers": []}, pipeline={"rerankers": ["ltr", "diversity"]})
    with pytest.raises(ComponentError, match="train it again with rankly train-ranker"):
        build_runtime(settings, load_model(shop[0]))


def test_an_ltr_array_of_another_model_is_refused_on_load(shop, trained, tmp_path):
    import shutil

    from rankly.engine.model import ArtifactError

    copy = tmp_path / "art"
    shutil.copytree(shop[0], copy)
    ctr = copy / "parts" / "ltr" / "item_ctr.npy"
    np.save(ctr, np.zeros(np.load(ctr).shape[0] + 5, dtype=np.load(ctr).dtype))
    with pytest.raises(ArtifactError, match="parts/ltr/item_ctr.npy has shape"):
        load_model(copy)
