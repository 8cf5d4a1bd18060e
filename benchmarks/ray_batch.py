"""`rankly recommend --all` on Ray: one worker against two, and the local engine for reference.

Run (about 2 minutes on 2 cores; needs `pip install -e '.[ray]'`):

    python benchmarks/ray_batch.py                      # 30,000 users, 2,000 items
    python benchmarks/ray_batch.py --users 10000 --repeat 1

Builds a synthetic shop (``rankly.engine.demo.synthesize``) and a pop + item-kNN model served
with the diversity reranker, then times the whole batch (actors started, model mapped, every
user's JSON line written to a file) on a local Ray of 2 CPUs and a 200 MB object store:

- ``local``: ``rankly.engine.evaluation.recommend`` in this process (the default engine);
- ``ray_1`` / ``ray_2``: :class:`rankly.engine.batch_ray.RayEngine` with 1 and 2 actors
  (blocks of 1,000 users), the best of ``--repeat`` runs each.

Every run's output is checked byte for byte against the local one. The target of issue 20 is
``ray_2 / ray_1 <= 0.6``. Results go to stdout and ``benchmarks/results/ray_batch.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "ray_batch.json"
CONFIG = {"pipeline": {"candidates": ("itemknn", "popular"), "scorers": ("itemknn", "popular"),
                       "rerankers": ("diversity",)}}


def build(root: Path, users: int, items: int) -> Path:
    from rankly.engine.demo import synthesize
    from rankly.engine.interactions import build_training_data
    from rankly.engine.model import fingerprint, save_model
    from rankly.engine.plugins import collect_all, make_plugin_manager

    interactions, table = synthesize(n_users=users, n_items=items, mean_events=20, seed=11)
    data = build_training_data(interactions, table)
    trainers = collect_all(make_plugin_manager())["trainers"].entries
    parts = [trainers[name].fit(data, {}) for name in ("pop", "itemknn")]
    return save_model(root / "model", data.catalog, data.users, parts, version="bench",
                      data_fingerprint=fingerprint(data.users.history_items))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=30_000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=2, help="runs per Ray setup (best kept)")
    args = ap.parse_args()

    from rankly.engine.batch_ray import RayEngine
    from rankly.engine.config import load_settings
    from rankly.engine.evaluation import recommend
    from rankly.engine.model import load_model

    root = Path(tempfile.mkdtemp(prefix="rankly-ray-bench-"))
    artifacts = build(root, args.users, args.items)
    settings = load_settings(environ={}, **CONFIG)
    users = [str(u) for u in load_model(artifacts).users.user_ids.tolist()]

    started = time.perf_counter()
    local = io.StringIO()
    recommend(load_model(artifacts), users, 10, settings, out=local)
    result: dict = {"users": len(users), "items": args.items, "cpu_count": os.cpu_count(),
                    "local_s": round(time.perf_counter() - started, 2)}
    expected = local.getvalue()
    with RayEngine.start() as probe:
        result["ray_cpus"] = probe.workers
        for workers in (1, 2):
            times = []
            for _ in range(args.repeat):
                engine = RayEngine(probe.ray, workers)
                out = io.StringIO()
                started = time.perf_counter()
                engine.recommend(artifacts, users, 10, settings, None, out)
                times.append(round(time.perf_counter() - started, 2))
                assert out.getvalue() == expected, "Ray output differs from the local engine"
            result[f"ray_{workers}_s"] = min(times)
            result[f"ray_{workers}_runs_s"] = times
    result["ratio_2_over_1"] = round(result["ray_2_s"] / result["ray_1_s"], 3)
    result["identical_output"] = True
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
