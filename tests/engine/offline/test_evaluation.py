"""Metric functions against hand-computed values, the splits, and the evaluation loop."""

from __future__ import annotations

import io
import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from rankly.engine import cli
from rankly.engine.config import CacheSettings, PipelineSettings, load_settings
from rankly.engine.offline import batch, datasets, evaluation
from rankly.engine.offline.interactions import Interactions, ItemTable, build_training_data
from rankly.engine.plugins import make_plugin_manager
from rankly.engine.serving.app import create_app
from rankly.plugins.models import als, ease, itemknn, popularity
from rankly.plugins.rerankers import diversity
from rankly.plugins.scorers import blend

SHARED = Path(os.environ.get("RANKLY_DATASETS")
              or Path(__file__).resolve().parents[3] / "../shared/datasets").resolve()
PLUGINS = (popularity, itemknn, ease, als, blend, diversity)


def test_ndcg_by_hand():
    # hit at rank 2 of 3; ideal has both relevant items at ranks 1-2
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert batch.ndcg_at_k([1, 2, 3, 4], {2, 4}, 3) == pytest.approx(expected)
    assert batch.ndcg_at_k([2, 4], {2, 4}, 10) == pytest.approx(1.0)
    assert batch.ndcg_at_k([1], set(), 10) == 0.0


def test_recall_and_hit_rate_by_hand():
    assert batch.recall_at_k([1, 2, 3, 4], {2, 4}, 3) == 0.5
    assert batch.hit_rate_at_k([1, 2, 3], {3}, 2) == 0.0
    assert batch.hit_rate_at_k([1, 2, 3], {3}, 3) == 1.0


def test_average_precision_by_hand():
    # hits at ranks 1 and 3: (1/1 + 2/3) / min(5, 3)
    assert batch.average_precision_at_k([7, 8, 9], {7, 9, 11}, 5) == pytest.approx(
        (1 + 2 / 3) / 3)
    assert batch.average_precision_at_k([1, 2, 3, 4], {2, 4}, 3) == pytest.approx(0.25)


def test_intra_list_diversity_by_hand():
    assert batch.intra_list_diversity([0, 0, 1]) == pytest.approx(2 / 3)
    assert batch.intra_list_diversity([0, 1, 2]) == 1.0
    assert batch.intra_list_diversity([-1, -1]) == 1.0  # uncategorized never equal
    assert batch.intra_list_diversity([3]) == 0.0


def test_novelty_coverage_and_cap_compliance_by_hand():
    pop = np.array([10, 1, 5])
    assert batch.novelty([0, 1], pop, 10) == pytest.approx(math.log2(10) / 2)
    assert evaluation.coverage([[0, 1], [1, 2]], 10) == pytest.approx(0.3)
    assert batch.cap_compliance([0, 0, 1, -1, -1, -1], 2)
    assert not batch.cap_compliance([0, 0, 0], 2)


def _events(rows):
    u, i, t = zip(*rows, strict=True)
    return Interactions(np.array(u, dtype=str), np.array(i, dtype=str),
                        np.ones(len(rows), np.float32), np.array(t, dtype=np.int64))


def test_user_last_split_holds_out_the_last_fifth_by_time_then_item():
    rows = [("a", f"i{n}", 100 - n) for n in range(10)] + [("b", "x", 5), ("b", "y", 5)]
    rows += [("c", "only", 1)]
    train, test = evaluation.split_user_last(_events(rows))
    held = sorted(zip(test.user_ids.tolist(), test.item_ids.tolist(), strict=True))
    # a: the two earliest-indexed items are the latest in time; b: tie on ts, later item id
    assert held == [("a", "i0"), ("a", "i1"), ("b", "y")]
    assert "c" in train.user_ids.tolist()


def test_temporal_split_cuts_at_the_quantile():
    rows = [("a", f"i{n}", n) for n in range(10)]
    train, test = evaluation.split_temporal(_events(rows), 0.8)
    assert train.timestamps.max() < test.timestamps.min()
    assert len(test) == 3  # quantile 0.8 of 0..9 ("lower") is 7


def test_targets_exclude_seen_and_keep_cold_items():
    train = _events([("a", "x", 1), ("a", "y", 2)])
    test = _events([("a", "x", 3), ("a", "z", 4), ("a", "new", 5), ("b", "y", 6)])
    data = build_training_data(train)
    targets = evaluation.test_targets(data, test, exclude_seen=True)
    assert targets["b"].tolist() == [data.catalog.index["y"]]
    # "x" was seen in train; "z" and "new" are cold items, distinct and never recommendable
    assert sorted(targets["a"].tolist()) == [-3, -2]


def _synthetic(n_users=60, n_items=40, seed=0):
    """Two taste clusters; each user mostly touches items of their cluster."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        pool = np.arange(n_items // 2) + (n_items // 2) * (u % 2)
        for t, i in enumerate(rng.choice(pool, 12, replace=False)):
            rows.append((f"u{u}", f"m{i}", 1000 * t + u))
    return datasets.Dataset(_events(rows), None, (), "events-csv")


def _categorized(ds):
    """``ds`` with an item table: item m<i> in category c<i % 3>."""
    ids = np.unique(ds.interactions.item_ids)
    items = ItemTable(ids, ids, [(f"c{int(i[1:]) % 3}",) for i in ids.tolist()])
    return datasets.Dataset(ds.interactions, items, (), "events-csv")


@pytest.fixture(scope="module")
def report():
    pm = make_plugin_manager(load_entrypoints=False, extra=PLUGINS)
    return evaluation.evaluate(_categorized(_synthetic()), "user-last",
                               ["pop", "ease", "implicit-als", "blend", "served"], k=5,
                               diversity_cap=2, pm=pm)


def test_evaluate_reports_every_metric_for_each_model(report):
    names = [r["model"] for r in report["results"]]
    assert names == ["pop", "pop+cap", "ease", "ease+cap", "implicit-als", "implicit-als+cap",
                     "blend", "blend+cap", "served"]
    warm = {r["model"]: r["warm"] for r in report["results"]}
    assert set(warm["ease"]) >= {"ndcg", "recall", "hr", "map", "coverage", "ild", "novelty",
                                 "categories", "cap_ok"}
    assert warm["ease"]["ndcg"] > warm["pop"]["ndcg"]
    json.dumps(report)
    assert "| ease (warm) |" in evaluation.format_table(report)


def test_served_setup_is_the_default_pipeline_with_its_diversity_cap(report):
    served = evaluation.SETUPS["served"]
    default = evaluation.PipelineSettings()
    assert (served.candidates, served.scorers, served.rerankers) == (
        default.candidates, default.scorers, default.rerankers)
    assert [t for t, _ in served.trainers] == list(evaluation.DEFAULT_TRAINERS)
    rows = {r["model"]: r for r in report["results"]}
    # no configured cap: "served" runs with the cap training validated for the model
    assert rows["served"]["cap"] is None and rows["blend"]["cap"] is None
    assert rows["blend+cap"]["warm"]["cap_ok"] == 1.0  # --diversity-cap 2
    bar = report["quality_bar"]
    assert set(bar["peers"]) == {"pop", "ease", "implicit-als"}
    assert bar["cap_cost"] == pytest.approx(
        1 - rows["served"]["warm"]["ndcg"] / rows["blend"]["warm"]["ndcg"])
    assert "quality bar: served" in evaluation.format_table(report)


def test_evaluation_ranks_through_the_serving_pipeline(monkeypatch):
    calls = []
    real = evaluation.pipeline.select

    def spy(*args, **kwargs):
        calls.append(args[3])  # the plan
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation.pipeline, "select", spy)
    pm = make_plugin_manager(load_entrypoints=False, extra=PLUGINS)
    evaluation.evaluate(_categorized(_synthetic()), "user-last", ["ease"], k=5, pm=pm,
                        max_users=7)
    assert len(calls) == 7
    assert calls[0].candidates == ("ease", "popular") and calls[0].rerankers == ()


@pytest.mark.slow
def test_rankly_recommend_equals_the_http_answers(artifacts, tmp_path, capsys):
    users = ["1", "2", "7", "ghost"]
    (tmp_path / "users.txt").write_text("\n".join(users) + "\n")
    assert cli.main(["recommend", "--artifacts", str(artifacts), "--users",
                     str(tmp_path / "users.txt"), "--n", "6"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["user_id"] for x in lines] == users
    settings = load_settings(environ={}, artifacts=artifacts, data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:  # a fresh event log: no online history
        for line in lines:
            body = client.get("/recommendations",
                              params={"user_id": line["user_id"], "n": 6}).json()
            assert line["items"] == [it["item_id"] for it in body["items"]]
            assert line["scores"] == [it["score"] for it in body["items"]]


def test_recommend_writes_one_json_line_per_user():
    pm = make_plugin_manager(load_entrypoints=False, extra=PLUGINS)
    ds = _synthetic()
    data = build_training_data(ds.interactions)
    settings = evaluation.Settings()
    parts = evaluation.train_parts(data, [("pop", {}), ("itemknn", {}), ("als", {}),
                                          ("ease", {})], pm, settings)
    model = evaluation.in_memory_model(data, parts)
    out = io.StringIO()
    settings = settings.replace(cache=CacheSettings(tiers=()), pipeline=PipelineSettings(
        candidates=("itemknn", "als", "popular"), scorers=("blend", "als", "popular")))
    assert batch.recommend(model, ["u1", "stranger"], 4, settings, pm=pm, out=out) == 2
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["user_id"] for x in lines] == ["u1", "stranger"]
    assert all(len(x["items"]) == 4 == len(x["scores"]) for x in lines)
    seen = set(data.catalog.item_ids[data.users.history(data.users.row("u1"))].tolist())
    assert not seen & set(lines[0]["items"])


@pytest.mark.skipif(not (SHARED / "ml-100k" / "u.data").exists(),
                    reason=f"licensed MovieLens 100K not present under {SHARED}")
def test_popularity_matches_the_published_sanity_numbers_on_ml100k():
    pm = make_plugin_manager(load_entrypoints=False, extra=PLUGINS)
    report = evaluation.evaluate(datasets.load(SHARED / "ml-100k"), "temporal", ["pop"], pm=pm)
    warm = report["results"][0]["warm"]
    assert warm["users"] == 109
    assert warm["ndcg"] == pytest.approx(0.145, abs=0.002)
    assert warm["recall"] == pytest.approx(0.063, abs=0.002)
    assert warm["hr"] == pytest.approx(0.505, abs=0.002)


def test_evaluate_html_is_one_self_contained_file_with_every_models_numbers(tmp_path, capsys):
    rng = np.random.default_rng(2)
    lines = ["user_id,item_id,category_id,timestamp"]
    for u in range(30):
        for t, i in enumerate(rng.choice(20, 8, replace=False) + 20 * (u % 2)):
            lines.append(f"u{u},i{i},c{i % 4},{t * 100 + u}")
    (tmp_path / "events.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "report.html"
    assert cli.main(["evaluate", "--interactions", str(tmp_path / "events.csv"), "--split",
                     "user-last", "--models", "pop,itemknn", "--diversity-cap", "2", "--json",
                     "--html", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.count("<svg") >= 8
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "<script" not in text.lower() and "<link" not in text.lower()
    for r in report["results"]:
        assert f"{r['model']} (warm)" in text
        assert f"{r['warm']['ndcg']:.4f}" in text and f"{r['warm']['hr']:.4f}" in text


def test_blend_validates_on_a_hold_out_shaped_like_the_split():
    served = evaluation.SETUPS["served"]
    shaped = evaluation._validated_on(served, "temporal")
    assert dict(shaped.trainers)["blend"] == {"validation": "temporal"}
    assert dict(shaped.trainers)["ease"] == dict(served.trainers)["ease"]
    assert evaluation._validated_on(served, None) is served


def _events_csv(path: Path) -> Path:
    rng = np.random.default_rng(2)
    lines = ["user_id,item_id,timestamp"]
    for u in range(30):
        for t, i in enumerate(rng.choice(20, 8, replace=False) + 20 * (u % 2)):
            lines.append(f"u{u},i{i},{t * 100 + u}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_draws_no_progress_when_stderr_is_not_a_terminal(tmp_path, capsys):
    assert cli.main(["evaluate", "--interactions", str(_events_csv(tmp_path / "e.csv")),
                     "--split", "user-last", "--models", "pop,itemknn"]) == 0
    err = capsys.readouterr().err
    assert "evaluating" not in err and "\r" not in err and "%|" not in err


@pytest.mark.parametrize("quiet", [False, True])
def test_evaluate_draws_a_bar_on_a_terminal_unless_quiet(tmp_path, tty_stderr, quiet):
    tty_stderr.as_stderr()
    assert cli.main(["evaluate", "--interactions", str(_events_csv(tmp_path / "e.csv")),
                     "--split", "user-last", "--models", "pop,itemknn",
                     *(["--quiet"] if quiet else [])]) == 0
    text = tty_stderr.output()
    assert ("evaluating itemknn" in text and "2/2" in text) is not quiet
    assert ("%|" in text) is not quiet


def test_recommend_draws_no_progress_when_stderr_is_not_a_terminal(artifacts, capsys):
    assert cli.main(["recommend", "--artifacts", str(artifacts), "--all"]) == 0
    assert capsys.readouterr().err == "300 users written\n"


@pytest.mark.parametrize("who", ["--all", "--users"])
@pytest.mark.parametrize("quiet", [False, True])
def test_recommend_draws_a_bar_on_a_terminal_unless_quiet(artifacts, tmp_path, tty_stderr,
                                                          who, quiet):
    (tmp_path / "users.txt").write_text("1\n2\n3\nghost\n")
    users = ["--users", str(tmp_path / "users.txt")] if who == "--users" else ["--all"]
    tty_stderr.as_stderr()
    assert cli.main(["recommend", "--artifacts", str(artifacts), *users,
                     *(["--quiet"] if quiet else [])]) == 0
    text = tty_stderr.output()
    count = 4 if who == "--users" else 300
    if quiet:
        assert text.replace("\r\n", "\n") == f"{count} users written\n"
    else:
        assert "recommending" in text and f"{count}/{count}" in text and "100%" in text


def test_recommend_writes_the_fallback_of_every_line(artifacts, tmp_path, capsys):
    (tmp_path / "users.txt").write_text("1\n2\nghost\n")
    assert cli.main(["recommend", "--artifacts", str(artifacts), "--users",
                     str(tmp_path / "users.txt")]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["fallback"] for x in lines] == [None, None, "cold_start"]


def test_recommend_has_no_online_deadline(artifacts, monkeypatch, capsys):
    monkeypatch.setenv("RANKLY_DEADLINES__REQUEST_MS", "2")
    monkeypatch.setenv("RANKLY_DEADLINES__STAGE_MS", "1")
    real = evaluation.pipeline.select

    def slow(*args, **kwargs):  # every answer takes 10x the online request deadline
        time.sleep(0.02)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation.pipeline, "select", slow)
    assert cli.main(["recommend", "--artifacts", str(artifacts), "--all", "--n", "5"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 300 and all(x["fallback"] is None for x in lines)
    assert len({tuple(x["items"]) for x in lines}) > 100  # personalized, not one popular list


def test_batch_settings_lift_the_online_deadlines_and_keep_a_store_budget():
    settings = load_settings(environ={"RANKLY_DEADLINES__REQUEST_MS": "2",
                                      "RANKLY_DEADLINES__STORE_MS": "30000"})
    d = batch.batch_settings(settings).deadlines
    assert d.request_ms == d.stage_ms == batch.BATCH_DEADLINE_MS
    assert d.store_ms == 30000
    assert batch.batch_settings(load_settings(environ={})).deadlines.store_ms == \
        batch.BATCH_STORE_MS


def test_the_served_setup_trains_ease_with_the_lambda_the_blend_tuned():
    """As in `rankly train`: the blend's tuned options reach the EASE trained after it."""
    pm = make_plugin_manager(load_entrypoints=False, extra=PLUGINS)
    data = build_training_data(_synthetic().interactions)
    test = {data.users.user_ids[0]: data.users.history(0)[:1]}
    cache = {}
    evaluation.evaluate_setup("served", evaluation.SETUPS["served"], data, test,
                              load_settings(environ={}), pm, 5, None, True, parts_cache=cache)
    parts = {key.split(":")[0]: part for key, part in cache.items()}
    chosen = parts["blend"].params["tuned_options"]["ease"]
    assert parts["ease"].params["lambda"] == chosen["lambda"]
    assert parts["ease"].params["dropout"] == chosen["dropout"]


def test_evaluate_refuses_a_misspelt_option_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANKLY_PLUGINS__ITEMKNN__NEIGHBORS", "5")
    assert cli.main(["evaluate", "--interactions", str(_events_csv(tmp_path / "e.csv")),
                     "--split", "user-last", "--models", "pop,itemknn"]) == 2
    assert "no such name 'neighbors'; did you mean 'neighbours'" in capsys.readouterr().err


@pytest.mark.parametrize("args,named", [
    (["--n", "0"], "argument --n: must be at least 1, got 0"),
    (["--n", "-3"], "argument --n: must be at least 1, got -3"),
    (["--n", "ten"], "argument --n: expected an integer, got 'ten'"),
    (["--engine", "ray", "--ray-workers", "0"], "argument --ray-workers: must be at least 1"),
])
def test_recommend_refuses_a_count_below_one(artifacts, tmp_path, capsys, args, named):
    (tmp_path / "users.txt").write_text("1\n")
    with pytest.raises(SystemExit) as exc:
        cli.main(["recommend", "--artifacts", str(artifacts), "--users",
                  str(tmp_path / "users.txt"), *args])
    assert exc.value.code == 2 and named in capsys.readouterr().err


def test_recommend_names_a_missing_users_file(artifacts, tmp_path, capsys):
    missing = tmp_path / "nobody.txt"
    assert cli.main(["recommend", "--artifacts", str(artifacts), "--users", str(missing)]) == 2
    assert f"--users {missing}: No such file or directory" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--k", "--max-users", "--diversity-cap"])
def test_evaluate_refuses_a_count_below_one(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", "--interactions", str(_events_csv(tmp_path / "e.csv")),
                  option, "0"])
    assert exc.value.code == 2
    assert f"argument {option}: must be at least 1, got 0" in capsys.readouterr().err


def test_evaluate_reports_a_peer_that_refuses_the_data_as_skipped(tmp_path, capsys,
                                                                  monkeypatch):
    # EASE refuses a catalog above max_items (DataRefused): its peer row says why, the
    # other setups are still evaluated, and the served blend goes without that part, as
    # `rankly train` does
    monkeypatch.setenv("RANKLY_PLUGINS__EASE__MAX_ITEMS", "10")
    events = str(_events_csv(tmp_path / "e.csv"))
    assert cli.main(["evaluate", "--interactions", events, "--split", "user-last",
                     "--models", "pop,ease,served", "--json", "--quiet"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert "max_items=10" in rows["ease"]["skipped"] and "warm" not in rows["ease"]
    assert rows["pop"]["warm"]["users"] > 0 and rows["served"]["warm"]["users"] > 0
    assert "skipped" not in rows["served"]
    assert cli.main(["evaluate", "--interactions", events, "--split", "user-last",
                     "--models", "pop,ease", "--quiet", "--html",
                     str(tmp_path / "r.html")]) == 0
    table = capsys.readouterr().out
    assert "| ease | skipped: ease: " in table and "| pop (warm) |" in table
    assert "ease: skipped: ease: " in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_evaluate_fails_on_a_bad_option_of_a_blend_part(tmp_path, capsys, monkeypatch):
    # only DataRefused leaves a part out; a bad value fails the command, naming it
    monkeypatch.setenv("RANKLY_PLUGINS__EASE__LOW_LAMBDA_SHARE", "2")
    assert cli.main(["evaluate", "--interactions", str(_events_csv(tmp_path / "e.csv")),
                     "--split", "user-last", "--models", "served", "--quiet"]) == 2
    assert "low_lambda_share must be in [0, 1), got 2" in capsys.readouterr().err
