"""`rankly recommend --all --engine ray`: two Ray workers against one, timed as a user runs it.

Run (on 2 idle cores; needs `pip install -e '.[ray]'`):

    OPENBLAS_NUM_THREADS=1 python benchmarks/ray_batch.py --large-users 50000 --rounds 5
        # the issue's 10,000 users and 50,000, about 12 minutes
    OPENBLAS_NUM_THREADS=1 python benchmarks/ray_batch.py --large-users 0 --rounds 2
        # 10,000 users only, a quick probe (about 2 minutes)

Builds synthetic shops (``rankly.engine.offline.demo.synthesize``, 2,000 items, the same
generator and seed for every size) with a pop + item-kNN model served with the diversity
reranker, then times the whole command in a fresh process, as a user runs it:

    rankly recommend --artifacts MODEL --all --config rankly.toml --quiet \\
        --engine ray [--address ADDR] --ray-workers W > out.jsonl

Python start-up, imports, Ray, the actors started with the model mapped, every user's line
written, Ray left. Two ways to get Ray, each timed:

- ``own``: no ``--address``; the command starts a local Ray (2 CPUs, 200 MB object store,
  listening on 127.0.0.1) and stops it, which costs seconds whatever the user count;
- ``joined``: ``--address`` of a local Ray this script started once (as a team keeps one for
  its jobs), so the command only connects. That Ray uses token authentication (Ray's default
  for a new local Ray), so these commands run with ``RAY_AUTH_MODE=token``, as a user joining
  it would.

Per user count and way:

- ``local``: the command with the default engine, once; its output is the reference every
  Ray run must equal byte for byte (checked after every run);
- ``fixed``: one worker for a single user (``--users``), once per round: what a run costs
  before any user is ranked, paid whole by one worker and two alike;
- ``floor`` (joined only): the least any job on that Ray costs, whatever it runs: Python,
  ``import ray``, joining, one actor (a new Ray worker process) answering one call, and the
  process ending at once (:data:`FLOOR_JOB`). ``fixed`` minus ``floor`` is rankly's own share
  of the fixed cost (its imports in the driver and the worker, the model, the first block);
- ``1`` / ``2`` workers: ``--rounds`` paired rounds, the pair's order alternating; the median
  (P50) of each and of the paired ratios ``2 workers / 1 worker`` is the result.

Where the time goes inside each Ray run is read from the command's own line of timings
(``ray: workers=W connect_s=... first_block_s=... ranked_s=... stop_s=...``, logged by
``rankly.engine.offline.batch_ray``): joining or starting Ray; asking for the workers until
the first block is back (a Ray worker process starting, importing rankly and the plugins,
mapping the model); until every block is back; stopping Ray (``stop_s``, only when the
command started it: a command that joined one ends its process instead of leaving it).
``rest_s`` is the whole command's time minus those: Python start-up, imports, settings, exit.
These phases are reported next to the whole command's time, which stays the result.

The target of issue 20 is a ratio <= 0.6. With a fixed cost F and a one-worker work time W, two
ideal workers give (F + W/2) / (F + W): it reaches 0.6 only once W >= 4F (W >= 4F + 10δ when
two workers lose δ to the split), so the issue's 10,000 users are reported together with a
larger shop. The 1-minute load average is recorded before and after every timed run: on a
shared 2-core machine two workers only get two cores when nobody else wants them (Ray runs
its workers at nice 15, so any process at normal priority comes first). ``cpu_s`` is the CPU
time of the command's process and of those it waited for: the driver's share, not the
workers'. ``bytecode`` says how many of rankly's modules had bytecode as fresh as their source:
with ``PYTHONDONTWRITEBYTECODE`` set on an editable checkout, none, and every process (the
driver and each worker) compiles the ones it imports again (a regular install compiles them
once; so does ``python -m compileall -q engine plugins _fast``). Results go to stdout and are
appended to the ``runs`` of
``benchmarks/results/ray_batch.json`` (``--results PATH``: another file, for a probe).
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
TIMINGS = re.compile(r"ray: workers=(\d+) ((?:\w+=[\d.]+ ?)+)")
#: Set by Ray or rankly in this process when they start the joined Ray; a command sets what it
#: needs itself, so none of them is handed down (RAY_AUTH_MODE only to joining commands)
RAY_ENV = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE")
#: The ``floor`` job: the smallest job on a joined Ray (argv[1] is its address)
FLOOR_JOB = """
import os, sys
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="WARNING")
class Empty:
    def ping(self):
        return 1
actor = ray.remote(num_cpus=1)(Empty).remote()
ray.get(actor.ping.remote())
ray.kill(actor)
os._exit(0)
"""


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


def bytecode_state() -> dict:
    """How many of rankly's modules have bytecode as fresh as their source: the others are
    compiled again by every process that imports them (the driver and each Ray worker), when
    ``PYTHONDONTWRITEBYTECODE`` is set and the package is an editable checkout."""
    import importlib.util

    import rankly._fast
    import rankly.engine
    import rankly.plugins

    sources = [p for pkg in (rankly.engine, rankly.plugins, rankly._fast)
               for p in Path(pkg.__path__[0]).rglob("*.py")]
    fresh = 0
    for src in sources:
        pyc = Path(importlib.util.cache_from_source(str(src)))
        fresh += pyc.exists() and pyc.stat().st_mtime >= src.stat().st_mtime
    return {"dont_write_bytecode": bool(sys.flags.dont_write_bytecode),
            "rankly_modules": len(sources), "with_fresh_bytecode": fresh}


def timed(args: list[str], out: Path, env: dict[str, str] | None = None,
          command: list[str] | None = None) -> dict:
    """Run ``rankly ARGS > out`` (or ``command + ARGS``) once: wall and CPU seconds, load
    average before and after, and for a Ray run the phases of its line of timings (see the
    module docstring)."""
    env = {**{k: v for k, v in os.environ.items() if k not in RAY_ENV}, **(env or {})}
    before = load()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with out.open("wb") as fh:
        proc = subprocess.run([*(command or RANKLY), *args], stdout=fh,
                              stderr=subprocess.PIPE, env=env, check=False)
    wall = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"rankly {' '.join(args)} failed:\n{proc.stderr.decode()[-2000:]}")
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    run = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_avg_1min": [before, load()]}
    found = TIMINGS.search(proc.stderr.decode())
    if found:
        phases = {k: float(v) for k, v in (kv.split("=") for kv in found[2].split())}
        phases["rest_s"] = round(wall - sum(phases.get(k, 0.0)
                                            for k in ("connect_s", "ranked_s", "stop_s")), 2)
        run["phases"] = phases
    return run


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
    modes = {"own": ([], {}), "joined": (["--address", address], {"RAY_AUTH_MODE": "token"})}
    runs: dict[str, list[dict]] = {f"{m}_{k}": [] for m in modes for k in ("fixed", "1", "2")}
    runs["joined_floor"] = []
    for r in range(rounds):
        for mode, (where, env) in modes.items():
            ray = [*where, "--engine", "ray", "--ray-workers"]
            if mode == "joined":
                runs["joined_floor"].append(
                    timed([address], out, env, [sys.executable, "-c", FLOOR_JOB]))
            runs[f"{mode}_fixed"].append(
                timed([*base, "--users", str(one_user), *ray, "1"], out, env))
            # NOTE: the pair's order alternates, so drift in the neighbours' load favours neither
            for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
                run = timed([*base, "--all", *ray, str(workers)], out, env)
                assert out.read_bytes() == expected, f"{mode} {workers} output differs from local"
                runs[f"{mode}_{workers}"].append(run)
                print(f"  {users} users, round {r + 1}, {mode} Ray, {workers} worker(s): {run}",
                      flush=True)
    result.update(runs)
    for name, rs in runs.items():
        result[f"{name}_p50_s"] = round(statistics.median(x["wall_s"] for x in rs), 2)
        result[f"{name}_phases_p50"] = {
            k: round(statistics.median(x["phases"][k] for x in rs), 2)
            for k in PHASES if all(k in x.get("phases", {}) for x in rs)}
    for mode in modes:
        ratios = [round(b["wall_s"] / a["wall_s"], 3)
                  for a, b in zip(runs[f"{mode}_1"], runs[f"{mode}_2"], strict=True)]
        result[f"{mode}_paired_ratios"] = ratios
        result[f"{mode}_ratio_p50"] = round(statistics.median(ratios), 3)
        fixed, one = result[f"{mode}_fixed_p50_s"], result[f"{mode}_1_p50_s"]
        result[f"{mode}_ms_per_user"] = round((one - fixed) / users * 1000, 3)
    result["identical_output"] = True
    return result


PHASES = {"connect_s": "connect", "first_block_s": "first block back",
          "ranked_s": "all blocks back", "stop_s": "stop", "rest_s": "the rest"}


def phase_line(phases: dict) -> str:
    return ", ".join(f"{what} {phases[k]:.2f}" for k, what in PHASES.items() if k in phases)


def report(r: dict) -> str:
    lines = [f"{r['users']:,} users x {r['items']:,} items "
             f"(whole command, P50 of {len(r['own_1'])} paired rounds):",
             f"  local engine {r['local']['wall_s']:.2f} s (load {r['local']['load_avg_1min']})"]
    for mode, what in (("own", "the command starts and stops its own local Ray"),
                       ("joined", "the command joins a running Ray (--address)")):
        ratio = r[f"{mode}_ratio_p50"]
        lines += [
            f"  {what}:",
            *([f"    floor (an empty job)     {r['joined_floor_p50_s']:7.2f} s"]
              if mode == "joined" and "joined_floor_p50_s" in r else []),
            f"    fixed (1 user, 1 worker) {r[f'{mode}_fixed_p50_s']:7.2f} s",
            f"    1 worker                 {r[f'{mode}_1_p50_s']:7.2f} s  "
            f"({r[f'{mode}_ms_per_user']} ms per user past the fixed cost)",
            f"    2 workers                {r[f'{mode}_2_p50_s']:7.2f} s",
            f"    ratio 2/1                {ratio:7.3f}    paired {r[f'{mode}_paired_ratios']}, "
            f"target <= 0.6 {'met' if ratio <= 0.6 else 'missed'}",
            "    load average before/after each 1-worker run "
            f"{[x['load_avg_1min'] for x in r[f'{mode}_1']]}, 2-worker run "
            f"{[x['load_avg_1min'] for x in r[f'{mode}_2']]}"]
        lines += [f"    in-job phases (s, P50), {name}: {phase_line(r[f'{mode}_{key}_phases_p50'])}"
                  for key, name in (("fixed", "fixed"), ("1", "1 worker"), ("2", "2 workers"))
                  if r.get(f"{mode}_{key}_phases_p50")]
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
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="JSON file the run is appended to (default: the committed history; "
                         "give another for a probe)")
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
                    "benchmark_args": sys.argv[1:],
                    "cpu_count": os.cpu_count(), "load_avg_start": list(os.getloadavg()),
                    "bytecode": bytecode_state(),
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
    print(f"rankly modules with fresh bytecode: {result['bytecode']['with_fresh_bytecode']} of "
          f"{result['bytecode']['rankly_modules']} (PYTHONDONTWRITEBYTECODE "
          f"{'set' if result['bytecode']['dont_write_bytecode'] else 'unset'})")
    path = args.results
    path.parent.mkdir(parents=True, exist_ok=True)
    history = json.loads(path.read_text()).get("runs", []) if path.exists() else []
    path.write_text(json.dumps({"runs": [*history, result]}, indent=2) + "\n")
    print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
