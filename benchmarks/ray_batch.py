"""`rankly recommend --all` on Ray: one worker against two, and the local engine for reference.

Run (about 2 minutes on 2 cores; needs `pip install -e '.[ray]'`):

    python benchmarks/ray_batch.py                      # 30,000 users, 2,000 items
    python benchmarks/ray_batch.py --users 10000 --repeat 1

Builds a synthetic shop (``rankly.engine.demo.synthesize``) and a pop + item-kNN model served
with the diversity reranker, then times the whole batch (actors started, model mapped, every
user's JSON line written to a file) on a local Ray of 2 CPUs and a 200 MB object store:

- ``local``: ``rankly.engine.evaluation.recommend`` in this process (the default engine);
- ``ray_1`` / ``ray_2``: :class:`rankly.engine.batch_ray.RayEngine`'s actor pool with 1 and 2
  actors (blocks of 1,000 users), ``--repeat`` runs each, alternating; the best of each and
  the ratio of each pair are reported, with the CPU seconds the actors spent (their sum: what
  the work costs whatever the neighbours; two workers match one when they add no overhead).

Every run's output is checked byte for byte against the local one. The target of issue 20 is
``ray_2 / ray_1 <= 0.6``. The machine's load average is recorded around every timed run: on a
shared 2-core machine two workers only get two cores when nobody else wants them. Results go to
stdout and are appended to the ``runs`` of ``benchmarks/results/ray_batch.json``.
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


class TimedRecommender:
    """:class:`rankly.engine.batch_ray.Recommender` that also reports its process's CPU time
    since it was built (defined in ``__main__``, so Ray ships it to the workers by value)."""

    def __init__(self, *init: object) -> None:
        from rankly.engine.batch_ray import Recommender

        self.inner = Recommender(*init)  # type: ignore[arg-type]
        self.cpu0 = time.process_time()

    def block(self, users: list[str]) -> tuple[str, int, float]:
        text = self.inner.block(users)
        return text, os.getpid(), time.process_time() - self.cpu0


def timed_run(engine: object, artifacts: Path, users: list[str], settings: object
              ) -> tuple[str, float, float]:
    """The JSON lines, wall seconds and the actors' CPU seconds of one Ray batch (through
    ``RayEngine._map``, the pool ``RayEngine.recommend`` uses)."""
    from rankly.engine.batch_ray import blocks

    started = time.perf_counter()
    texts, cpu = [], {}
    for text, pid, seconds in engine._map(  # type: ignore[attr-defined]
            TimedRecommender, (str(artifacts), settings, 10, None), blocks(users, 1000)):
        texts.append(text)
        cpu[pid] = seconds
    return "".join(texts), time.perf_counter() - started, sum(cpu.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=30_000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3, help="runs per Ray setup (alternating)")
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
        # NOTE: one and two workers alternate, so both see the same neighbours on a shared
        # machine; a pause after each run lets Ray replace the killed actors' processes
        # before the next run is timed.
        for _ in range(args.repeat):
            for workers in (1, 2):
                engine = RayEngine(probe.ray, workers)
                load_before = os.getloadavg()[0]
                text, wall, cpu = timed_run(engine, artifacts, users, settings)
                result.setdefault(f"ray_{workers}_runs_s", []).append(round(wall, 2))
                result.setdefault(f"ray_{workers}_actor_cpu_s", []).append(round(cpu, 2))
                result.setdefault(f"ray_{workers}_load_avg_1min", []).append(
                    [round(load_before, 2), round(os.getloadavg()[0], 2)])
                assert text == expected, "Ray output differs from the local engine"
                time.sleep(5)
    for workers in (1, 2):
        result[f"ray_{workers}_s"] = min(result[f"ray_{workers}_runs_s"])
    result["ratio_2_over_1"] = round(result["ray_2_s"] / result["ray_1_s"], 3)
    result["paired_ratios"] = [round(b / a, 3) for a, b in zip(
        result["ray_1_runs_s"], result["ray_2_runs_s"], strict=True)]
    result["identical_output"] = True
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(exist_ok=True)
    history = json.loads(RESULTS.read_text()).get("runs", []) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps({"runs": [*history, result]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
