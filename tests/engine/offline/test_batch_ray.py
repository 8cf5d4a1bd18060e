"""Batch jobs on Ray: the same output as the local engine, block by block over Ray workers."""

from __future__ import annotations

import builtins
import io
import json
import logging
import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

from rankly.engine.cli import main
from rankly.engine.config import load_settings
from rankly.engine.model import fingerprint, load_model, save_model
from rankly.engine.offline import batch, datasets, evaluation
from rankly.engine.offline.batch_ray import MIN_BLOCK_USERS, blocks
from rankly.engine.offline.demo import synthesize
from rankly.engine.offline.interactions import build_training_data
from rankly.engine.plugins import collect_all, make_plugin_manager

needs_ray = pytest.mark.skipif(find_spec("ray") is None,
                               reason="Ray is not installed (pip install 'rankly[ray]')")

CONFIG = """
[pipeline]
candidates = ["itemknn", "popular"]
scorers = ["itemknn", "popular"]
rerankers = ["diversity"]
"""


@pytest.fixture(scope="module")
def ray_engine():
    """One bounded local Ray (2 CPUs, 200 MB object store) for the module's tests; the
    commands find it initialized and use it instead of starting their own."""
    from rankly.engine.offline.batch_ray import RayEngine

    with RayEngine.start(workers=2, block_users=1000) as engine:
        yield engine


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A synthetic shop of 10,000 users and 1,000 items, a pop + item-kNN model, a config
    that serves it (with the diversity reranker)."""
    root = tmp_path_factory.mktemp("ray-shop")
    interactions, items = synthesize(n_users=10_000, n_items=1000, mean_events=15, seed=11)
    data = build_training_data(interactions, items)
    trainers = collect_all(make_plugin_manager())["trainers"].entries
    parts = [trainers[name].fit(data, {}) for name in ("pop", "itemknn")]
    artifacts = save_model(root / "model", data.catalog, data.users, parts, version="v1",
                           data_fingerprint=fingerprint(data.users.history_items))
    config = root / "rankly.toml"
    config.write_text(CONFIG)
    return artifacts, config


@pytest.mark.slow
@needs_ray
def test_recommend_all_on_ray_writes_the_local_engines_bytes(ray_engine, shop, capsys,
                                                             caplog):
    artifacts, config = shop
    model = load_model(artifacts)
    users = [str(u) for u in model.users.user_ids.tolist()]
    local = io.StringIO()
    batch.recommend(model, users, 10, load_settings(config, environ={}), out=local)
    caplog.set_level(logging.INFO, logger="rankly.batch")
    assert main(["recommend", "--artifacts", str(artifacts), "--all", "--config", str(config),
                 "--quiet", "--engine", "ray"]) == 0
    captured = capsys.readouterr()
    assert len(users) == 10_000 and captured.out.count("\n") == 10_000
    assert captured.out == local.getvalue()
    assert "10000 users written" in captured.err
    first = json.loads(captured.out.splitlines()[0])
    assert first["user_id"] == users[0] and len(first["items"]) == 10
    # where the time went, one line: the blocks' part (the engine joined the fixture's Ray)
    timings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ray: ")]
    assert len(timings) == 1 and "workers=2" in timings[0] and "ranked_s=" in timings[0]


@pytest.mark.slow
@needs_ray
def test_a_command_joins_a_local_ray_at_its_loopback_address(ray_engine, shop, tmp_path):
    """The command as a user runs it, in its own process, joining the fixture's Ray by its
    address; the environment says nothing about loopback (the engine sees to it). Done, it
    ends its process without leaving Ray first: every line and its count still arrive."""
    artifacts, config = shop
    users = tmp_path / "users.txt"
    users.write_text("".join(f"{u}\n" for u in load_model(artifacts).users.user_ids[:600]))
    local = io.StringIO()
    batch.recommend(load_model(artifacts), users.read_text().split(), 10,
                         load_settings(config, environ={}), out=local)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    address = ray_engine.ray.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, "-m", "rankly.engine.cli", "recommend", "--artifacts", str(artifacts),
         "--users", str(users), "--config", str(config), "--quiet", "--engine", "ray",
         "--address", address, "--ray-workers", "2"],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == local.getvalue()
    assert "ray: workers=2 connect_s=" in proc.stderr and "ranked_s=" in proc.stderr
    assert "stop_s=" not in proc.stderr  # it never left Ray: the process ended
    assert proc.stderr.rstrip().endswith("600 users written")


@pytest.mark.slow
@needs_ray
def test_evaluate_joining_a_ray_ends_its_process_after_the_report(ray_engine, tmp_path, capsys):
    """`rankly evaluate --engine ray --address`, as a user runs it: the report is the local
    engine's, and the process ends without leaving Ray first (no stop_s)."""
    interactions, _ = synthesize(n_users=300, n_items=100, mean_events=10, seed=3)
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\n" + "".join(
        f"{u},{i},{t}\n" for u, i, t in zip(interactions.user_ids, interactions.item_ids,
                                           interactions.timestamps, strict=True)))
    args = ["evaluate", "--interactions", str(events), "--split", "user-last", "--models",
            "pop,itemknn", "--json", "--quiet"]
    assert main(args) == 0
    local = json.loads(capsys.readouterr().out)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    address = ray_engine.ray.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, "-m", "rankly.engine.cli", *args, "--engine", "ray", "--address",
         address, "--ray-workers", "2"],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    on_ray = json.loads(proc.stdout)
    for report in (local, on_ray):
        for row in report["results"]:
            row.pop("train_seconds")
    assert on_ray == local
    assert "ray: workers=2 connect_s=" in proc.stderr and "stop_s=" not in proc.stderr


@pytest.mark.slow
@needs_ray
def test_the_local_ray_of_a_command_listens_on_loopback_only():
    """A local Ray started by the engine in a fresh process: every socket its processes (the
    driver, the GCS, the raylet, the agents, the workers) listen on is on 127.0.0.1."""
    script = """
import json
from rankly.engine.offline.batch_ray import RayEngine

with RayEngine.start(workers=1) as engine:
    import psutil  # Ray's own copy when no other is installed

    engine.ray.get(engine.ray.remote(lambda: 1).remote())  # a worker up too
    procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
    hosts = set()
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        hosts |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}
    print(json.dumps({"gcs": engine.ray.get_runtime_context().gcs_address,
                      "hosts": sorted(hosts), "procs": len(procs)}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["gcs"].startswith("127.0.0.1:")
    assert seen["procs"] >= 3 and seen["hosts"]
    assert set(seen["hosts"]) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, seen


@pytest.mark.slow
@needs_ray
def test_the_local_ray_of_a_command_runs_no_autoscaler():
    """A local Ray of fixed size has nothing to scale: its autoscaler monitor is ended at
    start (at shutdown it held every command for a second), silently: nothing but the
    command's own output reaches stdout."""
    script = """
import json
from rankly.engine.offline.batch_ray import RayEngine

with RayEngine.start(workers=1) as engine:
    import psutil

    engine.ray.get(engine.ray.remote(lambda: 1).remote())
    cmds = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmds.append(" ".join(proc.cmdline()))
        except psutil.Error:
            continue
    print(json.dumps({"monitors": [c for c in cmds if "autoscaler" in c and "monitor" in c],
                      "procs": len(cmds)}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # no "the autoscaler failed" on stdout
    seen = json.loads(lines[0])
    assert seen["procs"] >= 2 and seen["monitors"] == [], seen


def test_blocks_keep_the_order_and_shrink_towards_the_end():
    users = [str(i) for i in range(10_000)]
    cut = blocks(users, 250, workers=2)
    assert [u for b in cut for u in b] == users
    sizes = [len(b) for b in cut]
    assert max(sizes) == 250 and sizes[0] == 250
    assert all(a >= b for a, b in zip(sizes, sizes[1:], strict=False))
    assert sizes[-2] == MIN_BLOCK_USERS  # the last blocks are the smallest (then what is left)
    assert blocks(users[:7], 250, workers=2) == [users[:7]]
    assert blocks([], 250) == []


def test_the_recommend_command_loads_none_of_the_other_commands():
    """`rankly recommend` (the Ray driver, up to asking for the workers) imports neither
    evaluate's nor train's modules, nor the pipeline, the plugins or NumPy: Ray starts
    sooner, and the workers are asked for before the driver maps the model."""
    script = """
import sys
from rankly.engine import cli
from rankly.engine.offline import batch_ray

cli.build_parser("recommend")
print(" ".join(sorted(m for m in sys.modules if m.startswith(("rankly.engine.offline.",
      "rankly.engine.pipeline", "rankly.plugins", "scipy", "numpy")))))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    loaded = set(proc.stdout.split())
    assert "rankly.engine.offline.recommend" in loaded
    assert not loaded & {"rankly.engine.offline.evaluation", "rankly.engine.offline.datasets",
                         "rankly.engine.offline.training", "rankly.engine.offline.batch",
                         "rankly.engine.pipeline", "scipy", "rankly.plugins", "numpy"}, loaded


@pytest.mark.slow
@needs_ray
def test_evaluate_on_ray_reports_the_local_metrics(ray_engine):
    interactions, items = synthesize(n_users=600, n_items=300, mean_events=20, seed=5)
    ds = datasets.Dataset(interactions, items, (), "synthetic")
    models = ["pop", "itemknn", "ease"]

    def report(engine):
        out = evaluation.evaluate(ds, "user-last", models, k=10, diversity_cap=3,
                                  settings=load_settings(environ={}), engine=engine)
        for row in out["results"]:
            row.pop("train_seconds")
        return out

    ray_engine.block_users = 100  # several blocks per setup: their order must hold
    try:
        assert report(ray_engine) == report(None)
    finally:
        ray_engine.block_users = 1000


def test_the_ray_engine_without_ray_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    code = main(["recommend", "--artifacts", str(_tiny_model(tmp_path)), "--all",
                 "--engine", "ray"])
    assert code == 2
    assert "pip install 'rankly[ray]'" in capsys.readouterr().err


def _tiny_model(root):
    interactions, items = synthesize(n_users=20, n_items=30, seed=1)
    data = build_training_data(interactions, items)
    trainers = collect_all(make_plugin_manager())["trainers"].entries
    return save_model(root / "tiny", data.catalog, data.users, [trainers["pop"].fit(data, {})],
                      data_fingerprint="tiny")
