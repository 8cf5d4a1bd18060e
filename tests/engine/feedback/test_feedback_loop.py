"""The feedback loop end to end: simulated users drive the real app, the CLI reads its log."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from starlette.testclient import TestClient

from rankly.engine import cli
from rankly.engine.feedback.slates import load_feedback
from rankly.engine.model import load_model
from rankly.engine.offline.simulator import Simulator, drive
from rankly.engine.serving.app import create_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served_log(artifacts, tmp_path_factory):
    """400 simulated requests served with exploration (rate 0.5 over the top 10).

    Without cache tiers: a cached slate was computed before the clicks that followed it, so
    a ranking recomputed from the log at the request's time differs from it (81% of the
    positions agree with the default L1 cache on, 100% without)."""
    from rankly.engine.config import load_settings

    data = tmp_path_factory.mktemp("loop")
    settings = load_settings(environ={}, artifacts=artifacts, data_dir=data,
                             exploration={"rate": 0.5, "top_m": 10}, cache={"tiers": []})
    model = load_model(artifacts)
    sim = Simulator.create([str(u) for u in model.users.user_ids.tolist()],
                           model.catalog.id_list(), seed=11)
    with TestClient(create_app(settings)) as client:
        result = drive(client, sim, requests=400, n=10, seed=1)
    return sim, result, data / "events" / "events.jsonl"


def test_off_policy_cli_estimates_the_served_ranking(served_log, artifacts, capsys):
    sim, result, path = served_log
    assert cli.main(["off-policy", "--events", str(path), "--artifacts", str(artifacts),
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["requests"] == result.requests == 400
    assert report["clicks"] == result.clicks
    assert report["explored_requests"] > 150
    feedback = load_feedback(path)
    truth = np.mean([sim.expected_ctr(s.user_id, s.base_items()) for s in feedback.slates])
    base = report["policies"]["base"]["ctr"]
    for kind in ("ips", "snips", "dr"):
        lo, hi = base[kind]["ci95"]
        slack = base[kind]["se"]  # one more se: a 95% interval misses 1 run in 20
        assert lo - slack <= truth <= hi + slack, (kind, truth, base[kind])
    # the model in DIR is the one that served: recomputed offline, it mostly agrees with
    # the logged rankings before exploration
    evaluated = report["policies"]["evaluated"]
    assert evaluated["support"] > 0.8
    assert evaluated["ctr"]["matched"] == report["policies"]["base"]["ctr"]["matched"]


def test_rankings_recomputed_offline_match_the_served_ones(served_log, artifacts):
    from rankly.engine.config import load_settings
    from rankly.engine.feedback.offpolicy import Logged, base_rankings, model_rankings

    _, _, path = served_log
    feedback = load_feedback(path)
    logged = Logged.of(feedback.slates)
    base = base_rankings(feedback, logged)
    evaluated = model_rankings(feedback, logged, artifacts, load_settings(environ={}))
    same = (base == evaluated) & logged.mask
    assert same.sum() == logged.mask.sum()


def test_export_events_jsonl_keeps_what_off_policy_reads(served_log, tmp_path):
    from rankly.engine.config import load_settings
    from rankly.engine.events import cli as events_cli

    _, result, path = served_log
    out = tmp_path / "export.jsonl"
    with open(out, "w", encoding="utf-8") as fh:
        asyncio.run(events_cli.export(load_settings(environ={}, data_dir=path.parent.parent),
                                      fh, include_impressions=True, fmt="jsonl"))
    a, b = load_feedback(path), load_feedback(out)
    assert [s.items for s in a.slates] == [s.items for s in b.slates]
    assert [s.propensities.tolist() for s in a.slates] == [s.propensities.tolist()
                                                           for s in b.slates]
    assert sum(int(s.clicks.sum()) for s in b.slates) == result.clicks


def test_rankings_recomputed_offline_keep_seen_items_when_the_server_does(artifacts,
                                                                          tmp_path):
    # with pipeline.exclude_seen off the server shows items of the user's history: the
    # ranking recomputed for a logged request must not leave them out
    from rankly.engine.config import load_settings
    from rankly.engine.feedback.offpolicy import Logged, base_rankings, model_rankings

    settings = load_settings(environ={}, artifacts=artifacts, data_dir=tmp_path,
                             cache={"tiers": []}, pipeline={"exclude_seen": False})
    model = load_model(artifacts)
    sim = Simulator.create([str(u) for u in model.users.user_ids.tolist()],
                           model.catalog.id_list(), seed=3)
    with TestClient(create_app(settings)) as client:
        drive(client, sim, requests=30, n=10, seed=4)
    feedback = load_feedback(tmp_path / "events" / "events.jsonl")
    logged = Logged.of(feedback.slates)
    evaluated = model_rankings(feedback, logged, artifacts, settings)
    same = (base_rankings(feedback, logged) == evaluated) & logged.mask
    assert same.sum() == logged.mask.sum() == 300
