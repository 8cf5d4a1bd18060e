"""Load benchmark: rankly over HTTP under wrk, as ratios to a bare Starlette route.

Run (about 4 minutes; needs wrk, and redis-server for the Redis rows):

    python benchmarks/load.py                      # writes benchmarks/results/load.json
    python benchmarks/load.py --duration 5 --only floor,cached,uncached

Every scenario starts its own server on a free 127.0.0.1 port (``rankly serve``, or uvicorn with
the floor app), warms it, runs ``wrk -t1`` for ``--duration`` seconds with a Lua script that walks
a pre-drawn request mix, and stops the server by the PID it started. The floor is a bare
Starlette route returning a fixed 10-item list on the same stack (uvicorn + httptools + uvloop,
no access log); rankly's req/s are printed as ratios to the floor with the same worker count,
measured in the same run. The request mix: Zipf-skewed known users (s = 1.1), 10% cold user
ids never seen in training, n in {10, 20}. ``cached`` scenarios first replay the whole mix once
so every request is a hit; ``uncached`` ones turn the cache tiers off. ``no-impressions`` rows
turn impression logging off (``[plugins.events] log_impressions``) to show what it costs.

On a shared machine absolute req/s drift from minute to minute, so every rankly scenario is
measured in ``--rounds`` rounds, each a floor run (a floor server with the same worker count,
kept up for the whole benchmark) immediately followed by the rankly run: ``vs_floor`` is the
median of the rounds' ratios. The ``scaling`` scenario keeps an uncached one-worker and an
uncached two-worker server up and alternates between them the same way (``w2_over_w1``).
Each row records the load average before and after it and the CPU seconds per second used by
the server processes and by wrk, so a run shows whether the load generator shared the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "load.json"
FLOOR_ITEMS = [{"item_id": str(1000 + i), "score": round(1.0 - i / 100, 6),
                "reasons": ["Matches your taste"]} for i in range(10)]

LUA = r"""
local paths = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  i = math.random(#paths)
end
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'JSON{"requests":%d,"seconds":%f,"errors":%d,"p50":%f,"p95":%f,"p99":%f,"max":%f}\n',
    summary.requests, summary.duration / 1e6, errors, latency:percentile(50) / 1e3,
    latency:percentile(95) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
"""


def floor_app() -> Any:
    """The floor: one Starlette route returning a fixed list (what no endpoint can beat)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def fixed(request: Any) -> JSONResponse:
        return JSONResponse({"user_id": request.query_params.get("user_id"),
                             "items": FLOOR_ITEMS})

    return Starlette(routes=[Route("/recommendations", fixed)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} not up after {timeout}s")


def worker_pids(pid: int) -> list[int]:
    """uvicorn's worker processes (children of ``pid``), or ``pid`` itself with one worker."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            kids += [int(k) for k in (task / "children").read_text().split()]
    # multiprocessing's resource tracker is a child too; workers are the ones serving Python
    workers = [k for k in kids if "resource_tracker" not in _cmdline(k)]
    return workers or [pid]


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    return ""


def memory(pid: int) -> dict[str, float]:
    """RSS, Shared_Clean and Private (MiB) of one process, from /proc/PID/smaps_rollup."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Shared_Clean", "Private_Clean", "Private_Dirty"):
            out[key] = round(int(rest.split()[0]) / 1024, 1)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (threads included)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (wrk runs), user + system."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(port: int, paths_file: Path, connections: int, duration: float,
            server_pid: int | None = None) -> dict[str, Any]:
    """One wrk run, with the CPU the server processes and wrk used per second of it."""
    pids = worker_pids(server_pid) if server_pid is not None else []
    s0, w0 = cpu_seconds(pids), children_cpu()
    r = run_wrk(port, paths_file, connections, duration)
    if pids:
        used = cpu_seconds(pids) - s0
        r["server_cpu"] = round(used / r["seconds"], 3)
        # CPU per answer: what the server spends, whatever else runs on the machine
        r["server_cpu_us"] = round(used / max(r["requests"], 1) * 1e6, 1)
    r["wrk_cpu"] = round((children_cpu() - w0) / r["seconds"], 3)
    return r


@contextlib.contextmanager
def server(cmd: list[str], env: dict[str, str], port: int, timeout: float = 180.0,
           ready: str = "/recommendations?user_id=1") -> Iterator[subprocess.Popen]:
    """Start ``cmd`` in its own process group; always stop exactly that group afterwards."""
    log = tempfile.NamedTemporaryFile("w+", prefix="rankly-load-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log, stderr=log,
                            start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}{ready}", proc, timeout)
        yield proc
    except Exception:
        log.seek(0)
        sys.stderr.write(log.read()[-3000:])
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group we created, led by our child
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        os.unlink(log.name)


def rankly_cmd(artifacts: Path, port: int, workers: int) -> tuple[list[str], dict[str, str]]:
    env = {"RANKLY_ARTIFACTS": str(artifacts), "RANKLY_PORT": str(port),
           "RANKLY_WORKERS": str(workers), "RANKLY_LOG_LEVEL": "warning",
           "RANKLY_DATA_DIR": tempfile.mkdtemp(prefix="rankly-load-data-")}
    return [sys.executable, "-m", "rankly.engine.cli", "serve"], env


def floor_cmd(port: int, workers: int) -> tuple[list[str], dict[str, str]]:
    return ([sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "--factory",
             "load:floor_app", "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers), "--http", "httptools", "--loop", "uvloop",
             "--no-access-log", "--log-level", "warning"], {})


def request_mix(user_ids: np.ndarray, count: int, seed: int, cold_share: float = 0.1,
                zipf_s: float = 1.1) -> list[str]:
    """Paths: Zipf-skewed known users (many distinct, heavy repeats), some cold ids."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, user_ids.size + 1, dtype=np.float64)
    p = ranks ** -zipf_s
    p /= p.sum()
    order = rng.permutation(user_ids.size)  # which users are the popular ones
    known = user_ids[order[rng.choice(user_ids.size, size=count, p=p)]]
    cold = rng.random(count) < cold_share
    ns = rng.choice([10, 20], size=count, p=[0.8, 0.2])
    return [f"/recommendations?user_id={'cold-' + str(rng.integers(1e9)) if c else u}&n={n}"
            for u, c, n in zip(known.tolist(), cold.tolist(), ns.tolist(), strict=True)]


def run_wrk(port: int, paths_file: Path, connections: int, duration: float) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(LUA)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
             "-s", fh.name, f"http://127.0.0.1:{port}", "--", str(paths_file)],
            capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    finally:
        os.unlink(fh.name)
    line = next(x for x in out.splitlines() if x.startswith("JSON"))
    r = json.loads(line[4:])
    r["rps"] = round(r["requests"] / r["seconds"], 1)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}


def counter(port: int, name: str, label: str = "") -> float:
    """Sum of a counter's series containing ``label`` so far (from /metrics; 0 if unreadable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith(name + "{") and label in ln)


def cache_hits(port: int) -> float:
    return counter(port, "rankly_cache_lookups_total", 'result="hit"')


def warm(port: int, paths_file: Path, max_passes: int = 10) -> float:
    """Replay the mix until >= 99% of requests are cache hits; return the last pass's ratio.

    Each worker has its own L1 and the kernel spreads connections over workers, so two
    workers need more passes. Bounded by ``max_passes`` runs of 3 s.
    """
    ratio = 0.0
    for _ in range(max_passes):
        before = cache_hits(port)
        r = run_wrk(port, paths_file, 32, 3.0)
        ratio = (cache_hits(port) - before) / max(r["requests"], 1)
        if ratio >= 0.99:
            break
    return round(ratio, 4)


def start_redis() -> tuple[subprocess.Popen, int] | None:
    exe = subprocess.run(["which", "redis-server"], capture_output=True, text=True).stdout
    if not exe.strip():
        return None
    port = free_port()
    proc = subprocess.Popen([exe.strip(), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc, port
        time.sleep(0.1)
    proc.kill()
    return None


def scenarios(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each: name, kind (floor/rankly), workers, connections, extra env, warm, dataset."""
    s: list[dict[str, Any]] = []
    for w in (1, 2):
        s.append({"name": f"floor w{w} c64", "group": "floor", "kind": "floor", "workers": w,
                  "connections": 64})
    s.append({"name": "floor w1 c16", "group": "floor", "kind": "floor", "workers": 1,
              "connections": 16})
    for w in (1, 2):
        s.append({"name": f"cached w{w} c64", "group": "cached", "workers": w,
                  "connections": 64, "warm": True})
        s.append({"name": f"uncached w{w} c64", "group": "uncached", "workers": w,
                  "connections": 64, "env": {"RANKLY_CACHE__TIERS": ""}})
    s.append({"name": "uncached w1 c16", "group": "uncached", "workers": 1, "connections": 16,
              "env": {"RANKLY_CACHE__TIERS": ""}})
    # two workers against one, alternated between two servers that are up at once
    s.append({"name": "scaling uncached w2/w1 c64", "group": "uncached", "kind": "scaling",
              "workers": 2, "connections": 64, "env": {"RANKLY_CACHE__TIERS": ""}})
    for conns in (64, 16):  # the selection on a worker thread (the default plan is inline)
        s.append({"name": f"uncached w1 c{conns} thread", "group": "inline", "workers": 1,
                  "connections": conns, "env": {"RANKLY_CACHE__TIERS": "",
                                                "RANKLY_PIPELINE__INLINE_SELECTION": "never"}})
    off = {"RANKLY_PLUGINS": '{"events": {"log_impressions": false}}'}
    s.append({"name": "cached w1 c64 no-impressions", "group": "impressions", "workers": 1,
              "connections": 64, "warm": True, "env": off})
    s.append({"name": "uncached w1 c16 no-impressions", "group": "impressions", "workers": 1,
              "connections": 16, "env": {"RANKLY_CACHE__TIERS": "", **off}})
    s.append({"name": "cached w1 c16 embedded", "group": "redis", "workers": 1,
              "connections": 16, "warm": True})
    for tiers in ("l1,l2", "l2"):
        s.append({"name": f"cached w1 c16 redis {tiers}", "group": "redis", "workers": 1,
                  "connections": 16, "warm": True, "redis": True,
                  "env": {"RANKLY_CACHE__TIERS": tiers}})
    s.append({"name": "uncached w1 c16 redis store", "group": "redis", "workers": 1,
              "connections": 16, "redis": True, "env": {"RANKLY_CACHE__TIERS": ""}})
    # c16: throughput under queueing; c2 (one request per worker): the latency of one request
    for cands in ("als", "als-ivf"):
        for conns in (16, 2):
            s.append({"name": f"synth1m {cands} uncached w2 c{conns}", "group": "synth1m",
                      "workers": 2, "connections": conns, "dataset": "synth1m",
                      "memory": conns == 16,
                      "env": {"RANKLY_CACHE__TIERS": "", "RANKLY_PIPELINE__CANDIDATES": cands,
                              "RANKLY_PIPELINE__SCORERS": "als",
                              "RANKLY_BLOCKED_PLUGINS": "blend"}})
    if args.only:
        groups = set(args.only.split(","))
        s = [x for x in s if x["group"] in groups or (x["group"] == "floor")]
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run")
    ap.add_argument("--paths", type=int, default=4000, help="requests in the drawn mix")
    ap.add_argument("--only", help="comma-separated groups (floor always runs)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternated floor/rankly (or w1/w2) runs per scenario; ratios are "
                         "the median of the rounds'")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(HERE))
    import pipeline_fixtures as fx

    from rankly.engine.model import load_model

    data = {"ml100k": fx.ml100k_artifacts()}
    plan = scenarios(args)
    if any(x.get("dataset") == "synth1m" for x in plan):
        data["synth1m"] = fx.synth1m_artifacts()
    mixes: dict[str, Path] = {}
    tmp = Path(tempfile.mkdtemp(prefix="rankly-load-"))
    for name, path in data.items():
        users = np.asarray(load_model(path).users.user_ids).astype(str)
        mixes[name] = tmp / f"{name}.txt"
        mixes[name].write_text("\n".join(request_mix(users, args.paths, seed=5)))

    redis = None
    results: list[dict[str, Any]] = []
    floors = contextlib.ExitStack()
    floor_ports: dict[int, tuple[int, int]] = {}

    def floor_port(workers: int) -> tuple[int, int]:
        """(port, pid) of a floor server with ``workers`` workers, started once, kept up."""
        if workers not in floor_ports:
            port = free_port()
            cmd, base = floor_cmd(port, workers)
            proc = floors.enter_context(server(cmd, base, port))
            run_wrk(port, mixes["ml100k"], 16, 1.0)
            floor_ports[workers] = port, proc.pid
        return floor_ports[workers]

    try:
        for sc in plan:
            env = dict(sc.get("env", {}))
            if sc.get("redis"):
                if redis is None:
                    redis = start_redis() or False
                if not redis:
                    print(f"skip {sc['name']}: redis-server not available", file=sys.stderr)
                    continue
                env["RANKLY_STORE_URL"] = f"redis://127.0.0.1:{redis[1]}"
                subprocess.run(["redis-cli", "-p", str(redis[1]), "flushall"],
                               capture_output=True, check=False)
            dataset = sc.get("dataset", "ml100k")
            load_before = os.getloadavg()
            try:
                if sc.get("kind") == "floor":
                    port, pid = floor_port(sc["workers"])
                    r = measure(port, mixes[dataset], sc["connections"], args.duration, pid)
                elif sc.get("kind") == "scaling":
                    r = run_scaling(sc, env, data[dataset], mixes[dataset], args)
                else:
                    r = run_rankly(sc, env, data[dataset], mixes[dataset], args, floor_port)
            except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
                print(f"skip {sc['name']}: {exc}", file=sys.stderr)
                continue
            r["load_avg"] = {"before": [round(x, 2) for x in load_before],
                             "after": [round(x, 2) for x in os.getloadavg()]}
            row = {k: v for k, v in sc.items() if k != "env"} | {"env": env} | r
            results.append(row)
            print(line(row), flush=True)
    finally:
        floors.close()
        if redis:
            redis[0].terminate()
            redis[0].wait(timeout=10)
    add_ratios(results)
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "duration": args.duration,
                                    "rounds": args.rounds, "command": sys.argv,
                                    "results": results}, indent=2))
    print(f"wrote {args.out}")
    return 0


def run_rankly(sc: dict[str, Any], env: dict[str, str], artifacts: Path, paths: Path,
               args: argparse.Namespace, floor_port: Any) -> dict[str, Any]:
    """Warm one rankly server, then ``--rounds`` rounds of a floor run and a rankly run."""
    port = free_port()
    cmd, base = rankly_cmd(artifacts, port, sc["workers"])
    with server(cmd, {**base, **env}, port) as proc:
        fport, fpid = floor_port(sc["workers"])
        if sc.get("warm"):
            warm(port, paths)
        else:  # first requests fault in mapped pages and fill thread pools
            run_wrk(port, paths, sc["connections"], 1.0)
        rounds = []
        before = cache_hits(port), counter(port, "rankly_fallbacks_total")
        for _ in range(max(1, args.rounds)):
            f = measure(fport, paths, sc["connections"], args.duration, fpid)
            r = measure(port, paths, sc["connections"], args.duration, proc.pid)
            r["floor_rps"] = f["rps"]
            r["floor_server_cpu"] = f.get("server_cpu")
            r["floor_server_cpu_us"] = f.get("server_cpu_us")
            if f.get("server_cpu_us") and r.get("server_cpu_us"):
                r["cpu_vs_floor"] = round(f["server_cpu_us"] / r["server_cpu_us"], 3)
            r["vs_floor"] = round(r["rps"] / f["rps"], 3)
            rounds.append(r)
        done = max(sum(r["requests"] for r in rounds), 1)
        out = summary(rounds)
        out["vs_floor"] = median([r["vs_floor"] for r in rounds])
        out["floor_rps"] = median([r["floor_rps"] for r in rounds])
        if all("cpu_vs_floor" in r for r in rounds):
            out["cpu_vs_floor"] = median([r["cpu_vs_floor"] for r in rounds])
        out["hit_ratio"] = round((cache_hits(port) - before[0]) / done, 4)
        # cold users are fallbacks by design (10% of the mix); timeouts and open breakers
        # show up as a larger share
        out["fallback_ratio"] = round(
            (counter(port, "rankly_fallbacks_total") - before[1]) / done, 4)
        if sc.get("memory"):
            out["memory_mib"] = {str(p): memory(p) for p in worker_pids(proc.pid)}
    return out


def run_scaling(sc: dict[str, Any], env: dict[str, str], artifacts: Path, paths: Path,
                args: argparse.Namespace) -> dict[str, Any]:
    """A one-worker and a ``workers``-worker server up at once, runs alternated."""
    p1, p2 = free_port(), free_port()
    cmd1, base1 = rankly_cmd(artifacts, p1, 1)
    cmd2, base2 = rankly_cmd(artifacts, p2, sc["workers"])
    with server(cmd1, {**base1, **env}, p1) as s1, server(cmd2, {**base2, **env}, p2) as s2:
        for port in (p1, p2):
            run_wrk(port, paths, sc["connections"], 1.0)
        rounds = []
        for _ in range(max(1, args.rounds)):
            one = measure(p1, paths, sc["connections"], args.duration, s1.pid)
            two = measure(p2, paths, sc["connections"], args.duration, s2.pid)
            two["w1_rps"] = one["rps"]
            two["w1_server_cpu"] = one.get("server_cpu")
            two["w1_wrk_cpu"] = one["wrk_cpu"]
            two["w2_over_w1"] = round(two["rps"] / one["rps"], 3)
            rounds.append(two)
    out = summary(rounds)
    out["w2_over_w1"] = median([r["w2_over_w1"] for r in rounds])
    out["w1_rps"] = median([r["w1_rps"] for r in rounds])
    return out


def median(xs: list[float]) -> float:
    return round(float(np.median(xs)), 3)


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The median round's numbers (by req/s), and every round as measured."""
    mid = sorted(rounds, key=lambda r: r["rps"])[len(rounds) // 2]
    return {**{k: v for k, v in mid.items() if k not in ("vs_floor", "w2_over_w1")},
            "rps": median([r["rps"] for r in rounds]), "rounds": rounds}


def line(r: dict[str, Any]) -> str:
    ratio = (f"vs floor {r['vs_floor']:.3f} " if "vs_floor" in r else "") + (
        f"w2/w1 {r['w2_over_w1']:.3f} " if "w2_over_w1" in r else "")
    per = " ".join(f"{x.get('vs_floor', x.get('w2_over_w1', ''))}" for x in r.get("rounds", []))
    return (f"{r['name']:<30} {r['rps']:>8.0f} req/s {ratio}[{per}]  p50 {r['p50']:6.2f}  "
            f"p95 {r['p95']:6.2f}  p99 {r['p99']:6.2f} ms  hits {r.get('hit_ratio', '-')}  "
            f"fallbacks {r.get('fallback_ratio', '-')}  errors {r['errors']}  "
            f"cpu server {r.get('server_cpu', '-')} wrk {r.get('wrk_cpu', '-')}  "
            f"cpu us/req {r.get('server_cpu_us', '-')} (floor/ours {r.get('cpu_vs_floor', '-')})  "
            f"load {r['load_avg']['before'][0]}->{r['load_avg']['after'][0]}")


def add_ratios(results: list[dict[str, Any]]) -> None:
    """``vs_floor`` where no round measured it: req/s over the floor row's with the same
    worker count and connections."""
    floors = {(r["workers"], r["connections"]): r["rps"] for r in results
              if r.get("kind") == "floor"}
    for r in results:
        f = floors.get((r["workers"], r["connections"]))
        if f and r.get("kind") not in ("floor", "scaling") and "vs_floor" not in r:
            r["vs_floor"] = round(r["rps"] / f, 3)


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| scenario | req/s | vs floor | P50 ms | P95 ms | P99 ms | hits | fallbacks |"
            " errors | CPU server / wrk | load avg |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ratio = f"{r['vs_floor']:.2f}" if "vs_floor" in r else "-"
        if "w2_over_w1" in r:
            ratio = f"w2/w1 {r['w2_over_w1']:.2f} (w1 {r['w1_rps']:.0f})"
        rows.append(f"| {r['name']} | {r['rps']:.0f} | {ratio} | {r['p50']:.2f} | "
                    f"{r['p95']:.2f} | {r['p99']:.2f} | {r.get('hit_ratio', '-')} | "
                    f"{r.get('fallback_ratio', '-')} | {r['errors']} | "
                    f"{r.get('server_cpu', '-')} / {r.get('wrk_cpu', '-')} | "
                    f"{r['load_avg']['before'][0]}-{r['load_avg']['after'][0]} |")
    mem = [r for r in results if "memory_mib" in r]
    for r in mem:
        for pid, m in r["memory_mib"].items():
            rows.append(f"\n{r['name']} worker {pid}: {m}")
    return "\n".join(rows)


def machine() -> dict[str, Any]:
    import platform

    import starlette
    import uvicorn

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), "")
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "uvicorn": uvicorn.__version__, "starlette": starlette.__version__,
            "wrk": (wrk.stdout + wrk.stderr).split("\n")[0],
            "load_avg": os.getloadavg()}


if __name__ == "__main__":
    sys.exit(main())
