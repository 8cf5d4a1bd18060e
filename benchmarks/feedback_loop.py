"""The whole feedback loop of issue 19 on one machine, in process, with the numbers.

    python benchmarks/feedback_loop.py [--users 1000] [--log-requests 4000] [--ab-requests 6000]

1. train the default model on the demo's synthetic shop;
2. serve it with exploration (rate 0.5 over the top 10) to simulated users (hidden tastes
   leaning towards their history, position-biased clicks) and log everything;
3. ``rankly train-ranker`` on that log;
4. ``rankly off-policy`` of the pipeline with the ranker (rerankers ltr, diversity) against
   the serving ranking without exploration ("base"), on a second log of the default policy
   with exploration, not trained on;
5. an A/B test through rankly's experiments (control: the default pipeline; ltr: rerankers
   ltr, diversity; exploration off), driven by the same simulator with other clicks;
   per-impression CTR per variant from the simulator's tallies, with a two-proportion z-test,
   and the ground truth (expected CTR of the slates served); and rankly's own per-impression
   CTR test from ``/experiments/ltr-ab/results`` (user-clustered variance; the experiment's
   primary metric, so rankly's verdict is on it), significant or not;
6. writes benchmarks/results/feedback_loop.json (docs/feedback-loop.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from starlette.testclient import TestClient

from rankly.engine.config import load_settings
from rankly.engine.experiments.stats import z_test_pooled
from rankly.engine.feedback import ltr_training, offpolicy
from rankly.engine.feedback.slates import load_feedback
from rankly.engine.model import load_model
from rankly.engine.offline.demo import train_shop
from rankly.engine.offline.simulator import Simulator, drive
from rankly.engine.serving.app import create_app

OUT = Path(__file__).resolve().parent / "results" / "feedback_loop.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--items", type=int, default=1200)
    ap.add_argument("--log-requests", type=int, default=4000)
    ap.add_argument("--ab-requests", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--top", type=int, default=10, help="the ltr reranker's `top` option")
    ap.add_argument("--out", default=str(OUT), help="where to write the results")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rankly-loop-"))
    result: dict = {"args": vars(args)}
    t = time.perf_counter()
    art = root / "model"
    train_shop(art, 7, n_users=args.users, n_items=args.items)
    result["train_seconds"] = round(time.perf_counter() - t, 1)
    sim = Simulator.for_model(load_model(art), seed=args.seed)

    # 2. serve with exploration, log
    t = time.perf_counter()
    serving = load_settings(environ={}, artifacts=art, data_dir=root / "explore",
                            exploration={"rate": 0.5, "top_m": 10}, cache={"tiers": []})
    with TestClient(create_app(serving)) as client:
        logged = drive(client, sim, args.log_requests, n=10, seed=1)
    events = root / "explore" / "events" / "events.jsonl"
    result["logged"] = {**logged.as_dict(), "seconds": round(time.perf_counter() - t, 1)}
    del result["logged"]["variants"]

    # 3. train the ranker
    t = time.perf_counter()
    report = ltr_training.train_ranker(events, art, load_settings(environ={}))
    result["train_ranker"] = {k: report[k] for k in (
        "train_slates", "valid_slates", "train_rows", "train_clicks", "valid_ndcg",
        "valid_offpolicy", "seconds", "model_version")}
    result["train_ranker"]["total_seconds"] = round(time.perf_counter() - t, 1)

    # 4. off-policy estimate of the ranker's lift over the serving ranking, on a fresh log of
    # the default policy with exploration (the training log's noise is in the ranker: on it
    # DR's reward model shares the item-level noise the ranker selected on)
    t = time.perf_counter()
    fresh = serving.replace(data_dir=root / "explore-2")
    with TestClient(create_app(fresh)) as client:
        drive(client, sim, args.log_requests, n=10, seed=3)
    feedback = load_feedback(root / "explore-2" / "events" / "events.jsonl")
    lg = offpolicy.Logged.of(feedback.slates)
    with_ltr = load_settings(environ={}, pipeline={"rerankers": ["ltr", "diversity"]},
                             plugins={"ltr": {"top": args.top}})
    est = offpolicy.evaluate(feedback, {
        "base": offpolicy.base_rankings(feedback, lg),
        "ltr": offpolicy.model_rankings(feedback, lg, art, with_ltr)})
    ltr = est["policies"]["ltr"]
    result["offpolicy"] = {
        "seconds": round(time.perf_counter() - t, 1),
        "base_ctr": {k: est["policies"]["base"]["ctr"][k]["estimate"]
                     for k in ("ips", "snips", "dr")},
        "ltr_ctr": {k: ltr["ctr"][k] for k in ("ips", "snips", "dr")},
        "ltr_support": ltr["support"], "ltr_ess": ltr["ctr"]["ess"],
        "lift_vs_base": ltr["ctr"]["lift_vs_base"],
    }

    # 5. the A/B test through rankly's experiments, exploration off
    experiment = {"key": "ltr-ab", "status": "running", "primary_metric": "impression_ctr",
                  "variants": [{"name": "control", "weight": 50},
                               {"name": "ltr", "weight": 50,
                                "rerankers": ["ltr", "diversity"],
                                "options": {"ltr": {"top": args.top}}}]}
    ab_settings = load_settings(environ={}, artifacts=art, data_dir=root / "ab",
                                cache={"tiers": []}, experiments=[experiment],
                                admin_token="loop-token")
    t = time.perf_counter()
    with TestClient(create_app(ab_settings)) as client:
        ab = drive(client, sim, args.ab_requests, n=10, seed=2)
        results = client.get("/experiments/ltr-ab/results",
                             headers={"Authorization": "Bearer loop-token"}).json()
    v = ab.as_dict()["variants"]
    c, x = v["control"], v["ltr"]
    test = z_test_pooled(c["clicks"], c["impressions"], x["clicks"], x["impressions"])
    z, p = test["z"], test["p_value"]
    result["ab"] = {
        "seconds": round(time.perf_counter() - t, 1), "variants": v,
        "ctr_lift": x["ctr"] / c["ctr"] - 1, "z": z, "p": p,
        "true_lift": x["expected_ctr"] / c["expected_ctr"] - 1,
        "rankly_results": results,
    }
    per_impression = results["per_impression"]
    ctr = per_impression["metrics"]["ctr"]["comparisons"][0]
    result["ab"]["rankly_per_impression"] = {
        "ctr": per_impression["metrics"]["ctr"]["rates"],
        "design_effect": {a["name"]: a["ctr_design_effect"] for a in per_impression["arms"]},
        "lift": ctr["relative_lift"]["estimate"], "lift_ci95": ctr["relative_lift"]["ci"],
        "z": ctr["z_test"]["z"], "p": ctr["z_test"]["p_value"],
        "p_always_valid": ctr["sequential"]["p_value_adjusted"],
        "significant": ctr["significant"],
    }
    result["ab"]["rankly_verdict"] = {"primary_metric": experiment["primary_metric"],
                                      "verdict": results["verdict"],
                                      "reason": results.get("verdict_reason")}
    lo, hi = ltr["ctr"]["lift_vs_base"]["dr"]["ci95"]
    result["dr_ci_contains_ab_lift"] = lo <= result["ab"]["ctr_lift"] <= hi
    Path(args.out).write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps({k: result[k] for k in ("logged", "offpolicy", "dr_ci_contains_ab_lift")},
                     indent=1, default=float))
    print("A/B:", json.dumps({k: result["ab"][k] for k in ("ctr_lift", "z", "p", "true_lift")}))
    print("A/B per impression, rankly's results:",
          json.dumps(result["ab"]["rankly_per_impression"], default=float))
    print("A/B, rankly's verdict:", json.dumps(result["ab"]["rankly_verdict"]))
    print("train-ranker:", json.dumps(result["train_ranker"], default=float))


if __name__ == "__main__":
    main()
