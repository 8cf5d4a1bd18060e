"""`rankly recommend --all --engine ray`: two Ray workers against one, timed as a user runs it.

Run (about 15 minutes on 2 idle cores; needs `pip install -e '.[ray]'`):

    python benchmarks/ray_batch.py                               # 10,000 and 100,000 users
    python benchmarks/ray_batch.py --large-users 0 --rounds 5    # the issue's 10,000 only

Builds synthetic shops (``rankly.engine.offline.demo.synthesize``, 2,000 items, the same
generator and seed for every size) with a pop + item-kNN model served with the diversity
reranker, then times the whole command in a fresh process, as a user runs it:

    rankly recommend --artifacts MODEL --all --config rankly.toml --quiet \\
        --engine ray [--address ADDR] --ray-workers W > out.jsonl

Python start-up, imports, Ray, the actors started with the model mapped, every user's line
written. Two ways to get Ray, each timed:

- ``own``: no ``--address``; the command starts a local Ray (2 CPUs, 200 MB object store)
  and stops it, which costs seconds whatever the user count;
- ``joined``: ``--address`` of a local Ray this script started once (as a team keeps one for
  its jobs), so the command only connects.

Per user count and way:

- ``local``: the command with the default engine, once; its output is the reference every
  Ray run must equal byte for byte (checked after every run);
- ``fixed``: one worker for a single user (``--users``), once per round: what a run costs
  before any user is ranked, paid whole by one worker and two alike;
- ``1`` / ``2`` workers: ``--rounds`` paired rounds, the pair's order alternating; the median
  (P50) of each and of the paired ratios ``2 workers / 1 worker`` is the result.

The target of issue 20 is a ratio <= 0.6. With a fixed cost F and a one-worker work time W, two
ideal workers give (F + W/2) / (F + W): it reaches 0.6 only once W >= 4F, so the issue's
10,000 users are reported together with a larger shop. The 1-minute load average is recorded
before and after every timed run: on a shared 2-core machine two workers only get two cores
when nobody else wants them. ``cpu_s`` is the CPU time of the command's process and of those
it waited for: the driver's share, not the workers'. Results go to stdout and are appended to
the ``runs`` of ``benchmarks/results/ray_batch.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "ray_batch.json"
CONFIG_TOML = """[pipeline]
candidates = ["itemknn", "popular"]
scorers = ["itemknn", "popular"]
rerankers = ["diversity"]
"""
RANKLY = [sys.executable, "-m", "rankly.engine.cli"]


def build(root: Path, users: int, items: int) -> Path:
    from rankly.engine.model import fingerprint, save_model
    from rankly.engine.offline.demo import synthesize
    from rankly.engine.offline.interactions import build_training_data
    from rankly.engine.plugins import collect_all, make_plugin_manager

    interactions, table = synthesize(n_users=users, n_items=items, mean_events=20, seed=11)
    data = build_training_data(interactions, table)
    trainers = collect_all(make_plugin_manager())["trainers"].entries
    parts = [trainers[name].fit(data, {}) for name in ("pop", "itemknn")]
    return save_model(root / "model", data.catalog, data.users, parts, version="bench",
                      data_fingerprint=fingerprint(data.users.history_items))


def load() -> float:
    return round(os.getloadavg()[0], 2)


def timed(args: list[str], out: Path) -> dict:
    """Run ``rankly ARGS > out`` once: wall and CPU seconds, load average before and after."""
    before = load()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with out.open("wb") as fh:
        proc = subprocess.run([*RANKLY, *args], stdout=fh, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"rankly {' '.join(args)} failed:\n{proc.stderr.decode()[-2000:]}")
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_avg_1min": [before, load()]}


def one_size(root: Path, users: int, items: int, rounds: int, address: str) -> dict:
    """Every timed run of one user count (see the module docstring)."""
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    artifacts = build(root, users, items)
    config = root / "rankly.toml"
    config.write_text(CONFIG_TOML)
    base = ["recommend", "--artifacts", str(artifacts), "--config", str(config), "--quiet"]
    result: dict = {"users": users, "items": items,
                    "build_s": round(time.perf_counter() - started, 1)}
    reference = root / "local.jsonl"
    result["local"] = timed([*base, "--all"], reference)
    expected = reference.read_bytes()
    assert expected.count(b"\n") == users
    one_user = root / "one_user.txt"
    one_user.write_text(json.loads(expected[:expected.index(b"\n")])["user_id"] + "\n")
    out = root / "ray.jsonl"
    modes = {"own": [], "joined": ["--address", address]}
    runs: dict[str, list[dict]] = {f"{m}_{k}": [] for m in modes for k in ("fixed", "1", "2")}
    for r in range(rounds):
        for mode, where in modes.items():
            ray = [*where, "--engine", "ray", "--ray-workers"]
            runs[f"{mode}_fixed"].append(timed([*base, "--users", str(one_user), *ray, "1"], out))
            # NOTE: the pair's order alternates, so drift in the neighbours' load favours neither
            for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
                run = timed([*base, "--all", *ray, str(workers)], out)
                assert out.read_bytes() == expected, f"{mode} {workers} output differs from local"
                runs[f"{mode}_{workers}"].append(run)
                print(f"  {users} users, round {r + 1}, {mode} Ray, {workers} worker(s): {run}",
                      flush=True)
    result.update(runs)
    for name, rs in runs.items():
        result[f"{name}_p50_s"] = round(statistics.median(x["wall_s"] for x in rs), 2)
    for mode in modes:
        ratios = [round(b["wall_s"] / a["wall_s"], 3)
                  for a, b in zip(runs[f"{mode}_1"], runs[f"{mode}_2"], strict=True)]
        result[f"{mode}_paired_ratios"] = ratios
        result[f"{mode}_ratio_p50"] = round(statistics.median(ratios), 3)
        fixed, one = result[f"{mode}_fixed_p50_s"], result[f"{mode}_1_p50_s"]
        result[f"{mode}_ms_per_user"] = round((one - fixed) / users * 1000, 3)
    result["identical_output"] = True
    return result


def report(r: dict) -> str:
    lines = [f"{r['users']:,} users x {r['items']:,} items "
             f"(whole command, P50 of {len(r['own_1'])} paired rounds):",
             f"  local engine {r['local']['wall_s']:.2f} s (load {r['local']['load_avg_1min']})"]
    for mode, what in (("own", "the command starts and stops its own local Ray"),
                       ("joined", "the command joins a running Ray (--address)")):
        ratio = r[f"{mode}_ratio_p50"]
        lines += [
            f"  {what}:",
            f"    fixed (1 user, 1 worker) {r[f'{mode}_fixed_p50_s']:7.2f} s",
            f"    1 worker                 {r[f'{mode}_1_p50_s']:7.2f} s  "
            f"({r[f'{mode}_ms_per_user']} ms per user past the fixed cost)",
            f"    2 workers                {r[f'{mode}_2_p50_s']:7.2f} s",
            f"    ratio 2/1                {ratio:7.3f}    paired {r[f'{mode}_paired_ratios']}, "
            f"target <= 0.6 {'met' if ratio <= 0.6 else 'missed'}",
            "    load average before/after each 1-worker run "
            f"{[x['load_avg_1min'] for x in r[f'{mode}_1']]}, 2-worker run "
            f"{[x['load_avg_1min'] for x in r[f'{mode}_2']]}"]
    lines.append("  output byte-identical to the local engine in every run: yes")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10_000, help="the issue's user count")
    ap.add_argument("--large-users", type=int, default=100_000,
                    help="a larger shop from the same generator, where the fixed cost is a "
                         "smaller share (0: skip)")
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3, help="paired rounds per user count")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="rankly-ray-bench-"))
    try:
        return run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, root: Path) -> int:
    result: dict = {"command": "rankly recommend --artifacts MODEL --all --config rankly.toml "
                               "--quiet --engine ray [--address ADDR] --ray-workers W "
                               "> out.jsonl",
                    "cpu_count": os.cpu_count(), "load_avg_start": list(os.getloadavg()),
                    "sizes": []}
    from rankly.engine.offline.batch_ray import RayEngine

    # the Ray that the "joined" runs use (--address), the way one is used across jobs; it is
    # idle while the "own" runs start theirs
    with RayEngine.start() as joined:
        address = joined.ray.get_runtime_context().gcs_address
        for users in (args.users, args.large_users):
            if users > 0:
                print(f"{users:,} users: building, then timing ...", flush=True)
                size = one_size(root / str(users), users, args.items, args.rounds, address)
                result["sizes"].append(size)
                print(report(size), flush=True)
    result["load_avg_end"] = list(os.getloadavg())
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print()
    for size in result["sizes"]:
        print(report(size))
    print(f"load average at start {result['load_avg_start']}, at end {result['load_avg_end']}")
    RESULTS.parent.mkdir(exist_ok=True)
    history = json.loads(RESULTS.read_text()).get("runs", []) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps({"runs": [*history, result]}, indent=2) + "\n")
    print(f"appended to {RESULTS.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
