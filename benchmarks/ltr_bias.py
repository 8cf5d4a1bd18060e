"""Position-bias corrections of ``rankly train-ranker`` compared by their true CTR lift.

    python benchmarks/ltr_bias.py [--users 300 --items 400 --log-requests 1500]
    python benchmarks/ltr_bias.py --users 1000 --items 1200 --log-requests 3000

Trains a model on a synthetic shop, logs ``--log-requests`` simulated requests served with
exploration (rate 0.5 over the top 10), trains the ranker with each ``--bias`` (position,
ipw, none), and for each serves ``--ab-requests`` requests with and without it to the same
simulated users in the same order; prints the true CTR lift (the simulator's expected CTR
of the served slates) for ``top`` 10 and 30, and the validation NDCG.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from starlette.testclient import TestClient

from rankly.engine.config import load_settings
from rankly.engine.feedback import ltr_training
from rankly.engine.model import load_model
from rankly.engine.offline.demo import train_shop
from rankly.engine.offline.simulator import Simulator, drive
from rankly.engine.serving.app import create_app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--shop-seed", type=int, default=3)
    ap.add_argument("--log-requests", type=int, default=1500)
    ap.add_argument("--ab-requests", type=int, default=1500)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rankly-ltr-bias-"))
    art = root / "model"
    train_shop(art, args.shop_seed, n_users=args.users, n_items=args.items)
    sim = Simulator.for_model(load_model(art), seed=11)
    logging = load_settings(environ={}, artifacts=art, data_dir=root / "log",
                            exploration={"rate": 0.5, "top_m": 10}, cache={"tiers": []})
    with TestClient(create_app(logging)) as client:
        logged = drive(client, sim, args.log_requests, n=10, seed=1)
    print(f"logged {logged.requests} requests, CTR {logged.ctr:.4f}")
    events = root / "log" / "events" / "events.jsonl"

    def true_ctr(label: str, rerankers: list[str], top: int) -> float:
        settings = load_settings(environ={}, artifacts=art, data_dir=root / label,
                                 cache={"tiers": []}, pipeline={"rerankers": rerankers},
                                 plugins={"ltr": {"top": top}})
        with TestClient(create_app(settings)) as client:
            r = drive(client, sim, args.ab_requests, n=10, seed=5)
        return r.expected_clicks / r.impressions

    default = true_ctr("default", ["diversity"], 10)
    print(f"default pipeline: true CTR {default:.5f}")
    for bias in ltr_training.BIAS_CORRECTIONS:
        report = ltr_training.train_ranker(events, art, load_settings(environ={}), bias=bias)
        lifts = [true_ctr(f"{bias}-{top}", ["ltr", "diversity"], top) / default - 1
                 for top in (10, 30)]
        nd = report["valid_ndcg"]
        print(f"--bias {bias:<8} lift top 10 {lifts[0]:+.1%}  top 30 {lifts[1]:+.1%}  "
              f"validation NDCG {nd['ranker']} (current {nd['current']})  examination "
              f"{report['examination']}")


if __name__ == "__main__":
    main()
