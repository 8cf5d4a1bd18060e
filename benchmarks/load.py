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
            port = free_port()
            dataset = sc.get("dataset", "ml100k")
            if sc.get("kind") == "floor":
                cmd, base = floor_cmd(port, sc["workers"])
            else:
                cmd, base = rankly_cmd(data[dataset], port, sc["workers"])
            try:
                with server(cmd, {**base, **env}, port) as proc:
                    if sc.get("warm"):
                        warm(port, mixes[dataset])
                    else:  # first requests fault in mapped pages and fill thread pools
                        run_wrk(port, mixes[dataset], sc["connections"], 1.0)
                    before = cache_hits(port), counter(port, "rankly_fallbacks_total")
                    r = run_wrk(port, mixes[dataset], sc["connections"], args.duration)
                    if sc.get("kind") != "floor":
                        done = max(r["requests"], 1)
                        r["hit_ratio"] = round((cache_hits(port) - before[0]) / done, 4)
                        # cold users are fallbacks by design (10% of the mix); timeouts and
                        # open breakers show up as a larger share
                        r["fallback_ratio"] = round(
                            (counter(port, "rankly_fallbacks_total") - before[1]) / done, 4)
                    if sc.get("memory"):
                        r["memory_mib"] = {str(p): memory(p) for p in worker_pids(proc.pid)}
            except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
                print(f"skip {sc['name']}: {exc}", file=sys.stderr)
                continue
            row = {k: v for k, v in sc.items() if k != "env"} | {"env": env} | r
            results.append(row)
            print(f"{sc['name']:<34} {r['rps']:>9.0f} req/s  p50 {r['p50']:6.2f}  "
                  f"p95 {r['p95']:6.2f}  p99 {r['p99']:6.2f} ms  hits {r.get('hit_ratio', '-')}  "
                  f"fallbacks {r.get('fallback_ratio', '-')}  "
                  f"errors {r['errors']}",
                  flush=True)
    finally:
        if redis:
            redis[0].terminate()
            redis[0].wait(timeout=10)
    add_ratios(results)
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "duration": args.duration,
                                    "results": results}, indent=2))
    print(f"wrote {args.out}")
    return 0


def add_ratios(results: list[dict[str, Any]]) -> None:
    """``vs_floor``: req/s over the floor's with the same worker count and connections."""
    floors = {(r["workers"], r["connections"]): r["rps"] for r in results
              if r.get("kind") == "floor"}
    for r in results:
        f = floors.get((r["workers"], r["connections"]))
        if f and r.get("kind") != "floor":
            r["vs_floor"] = round(r["rps"] / f, 3)


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| scenario | req/s | vs floor | P50 ms | P95 ms | P99 ms | hits | fallbacks |"
            " errors |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ratio = f"{r['vs_floor']:.2f}" if "vs_floor" in r else "-"
        rows.append(f"| {r['name']} | {r['rps']:.0f} | {ratio} | {r['p50']:.2f} | "
                    f"{r['p95']:.2f} | {r['p99']:.2f} | {r.get('hit_ratio', '-')} | "
                    f"{r.get('fallback_ratio', '-')} | {r['errors']} |")
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
