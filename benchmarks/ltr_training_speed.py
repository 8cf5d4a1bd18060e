"""``rankly train-ranker`` on 1M logged impressions: the issue-19 target is under 2 minutes
on 2 cores.

    python benchmarks/ltr_training_speed.py [--slates 100000] [--logged-features]

Trains the default model on the demo's shop (1,000 users, 1,200 items), writes a log of
``--slates`` slates of 10 (the default pipeline's slates for random users, explored at rate
0.5 and clicked by the simulator: generated offline, which takes longer than the training),
then times ``train_ranker`` end to end (reading the log, joining, features, LightGBM fit,
validation, writing the part) and writes benchmarks/results/ltr_training.json. With
``--logged-features`` the impressions carry the serve-time record the pipeline captures
(pipeline/served.py, without live counters), so train-ranker reads its features instead of
recomputing them (benchmarks/results/ltr_training_logged.json).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from rankly.engine import pipeline
from rankly.engine.config import ExplorationSettings, load_settings
from rankly.engine.feedback import ltr_training
from rankly.engine.feedback.exploration import explore
from rankly.engine.model import load_model
from rankly.engine.offline.batch import rank_user, serving_runtime
from rankly.engine.offline.demo import train_shop
from rankly.engine.offline.simulator import Simulator
from rankly.engine.pipeline.served import capture, impression_fields
from rankly.engine.types import RecommendationRequest, UserFeatures

OUT = Path(__file__).resolve().parent / "results" / "ltr_training.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slates", type=int, default=100_000)
    ap.add_argument("--logged-features", action="store_true",
                    help="log the serve-time features with the impressions")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rankly-ltr-speed-"))
    art = root / "model"
    train_shop(art, 7, n_users=1000, n_items=1200)
    model = load_model(art)
    sim = Simulator.for_model(model, seed=11)
    rt = serving_runtime(model, load_settings(environ={}))
    plan = pipeline.default_plan(rt)
    ids = model.catalog.id_list()
    rng = np.random.default_rng(0)
    prng = random.Random(0)
    explore_settings = ExplorationSettings(rate=0.5, top_m=10)
    slates_per_user: dict[int, list[str]] = {}
    records: dict[int, dict] = {}
    t = time.perf_counter()
    path = root / "events.jsonl"
    with open(path, "w") as fh:
        for r in range(args.slates):
            row = int(rng.integers(len(model.users)))
            base = slates_per_user.get(row)
            if base is None:  # one ranking per user: the log's history is not replayed
                h = model.users.history(row)
                user_features = UserFeatures(str(model.users.user_ids[row]), row, h, np.sort(h))
                if args.logged_features:  # what the server's capture holds for this slate
                    trace = pipeline.Trace()
                    ranking = pipeline.select(
                        rt, rt.components, RecommendationRequest(user_features.user_id, 10),
                        plan, user_features, trace)
                    records[row] = capture(model, h, ranking.items, trace.pool, trace.scorer,
                                           trace.sources, None, True).record()
                else:
                    ranking = rank_user(rt, plan, user_features, 10)
                base = slates_per_user[row] = [ids[i] for i in ranking.items.tolist()]
            shown, positions = explore(base, explore_settings, prng)
            user = str(model.users.user_ids[row])
            if args.logged_features:
                shared, per_item = impression_fields(records[row], shown)
                positions = [{**p, **shared, **f}
                             for p, f in zip(positions or [{"propensity": 1.0}] * len(shown),
                                             per_item, strict=True)]
            fh.write("\n".join(sim.log_lines(user, shown, f"r{r}", 1.76e9 + r, rng,
                                             positions)) + "\n")
    generated = time.perf_counter() - t
    t = time.perf_counter()
    report = ltr_training.train_ranker(path, art, load_settings(environ={}))
    seconds = time.perf_counter() - t
    result = {"slates": args.slates, "impressions": args.slates * 10,
              "train_rows": report["train_rows"], "log_generation_seconds": round(generated, 1),
              "train_ranker_seconds": round(seconds, 1), "stages": report["seconds"],
              "logged_feature_slates": report["logged_feature_slates"],
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "valid_ndcg": report["valid_ndcg"]}
    out = OUT.with_name("ltr_training_logged.json") if args.logged_features else OUT
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
