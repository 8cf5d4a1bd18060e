"""Redis fixtures: a real standalone redis-server and a real 3-master Redis Cluster on loopback.

Both are started once per test session in a temporary directory and stopped by PID. Tests
that take ``redis_url`` run twice, once per deployment, with the same test body; each test gets
its own namespace (``redis_namespace``) so tests never see each other's keys.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
NEEDS_REDIS = pytest.mark.skipif(
    REDIS_SERVER is None or REDIS_CLI is None,
    reason="redis-server/redis-cli not installed (Debian: apt-get install redis-server)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(port: int, *args: str, timeout: float = 10.0) -> str:
    out = subprocess.run([REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
                         capture_output=True, text=True, timeout=timeout)
    return out.stdout


@dataclass
class RedisServer:
    """One redis-server process on 127.0.0.1:``port`` (stop/restart it to inject faults)."""

    port: int
    workdir: Path
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _cli(self.port, "PING").strip() == "PONG":
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited at start")
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def cli(self, *args: str) -> str:
        return _cli(self.port, *args)


@dataclass
class RedisDeployment:
    """What tests see: a URL, the server processes, and a helper to run redis-cli on each."""

    kind: str
    url: str
    servers: list[RedisServer]

    def cli_all(self, *args: str) -> list[str]:
        return [s.cli(*args) for s in self.servers]

    def command_calls(self, command: str) -> int:
        """Total calls of ``command`` over all nodes (``INFO commandstats``)."""
        total = 0
        for text in self.cli_all("INFO", "commandstats"):
            for line in text.splitlines():
                if line.startswith(f"cmdstat_{command.lower()}:"):
                    total += int(line.split("calls=")[1].split(",")[0])
        return total

    def reset_stats(self) -> None:
        self.cli_all("CONFIG", "RESETSTAT")


def _start_on_free_port(workdir: Path, cluster: bool = False) -> RedisServer:
    """Start a server, retrying on another port when the free one was taken meanwhile."""
    for attempt in range(5):
        port = free_port()
        extra = ("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                 "--cluster-node-timeout", "2000") if cluster else ()
        server = RedisServer(port, workdir, extra=extra)
        try:
            return server.start()
        except RuntimeError:
            server.stop()
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisDeployment]:
    """A standalone redis-server on a free loopback port (``--save '' --appendonly no``)."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server/redis-cli not installed (Debian: apt-get install redis-server)")
    server = _start_on_free_port(tmp_path_factory.mktemp("redis"))
    try:
        yield RedisDeployment("standalone", server.url, [server])
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisDeployment]:
    """A 3-master Redis Cluster (no replicas) on free loopback ports, ``cluster_state:ok``."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server/redis-cli not installed (Debian: apt-get install redis-server)")
    root = tmp_path_factory.mktemp("redis-cluster")
    servers = []
    try:
        for n in range(3):
            servers.append(_start_on_free_port(root / str(n), cluster=True))
        addrs = [f"127.0.0.1:{s.port}" for s in servers]
        subprocess.run([REDIS_CLI, "--cluster", "create", *addrs, "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 20
        while not all("cluster_state:ok" in s.cli("CLUSTER", "INFO") for s in servers):
            if time.monotonic() > deadline:
                raise RuntimeError("Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        yield RedisDeployment("cluster", "redis+cluster://" + ",".join(addrs), servers)
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(params=["standalone", "cluster"])
def redis_deployment(request: pytest.FixtureRequest) -> RedisDeployment:
    """The same test against a standalone Redis and against a 3-master cluster."""
    return request.getfixturevalue("redis_server" if request.param == "standalone"
                                   else "redis_cluster")


@pytest.fixture
def redis_url(redis_deployment: RedisDeployment) -> str:
    return redis_deployment.url


_ns_counter = itertools.count()


@pytest.fixture
def redis_namespace() -> str:
    """A namespace no other test uses (keys of different tests never meet)."""
    return f"t{next(_ns_counter)}-{uuid.uuid4().hex[:8]}"


def build_artifacts(out: Path, seed: int = 7, version: str | None = None) -> Path:
    """Train the small pop + itemknn model the Redis tests serve (200 users, 300 items)."""
    from rankly.engine.model import fingerprint, save_model
    from rankly.engine.offline.demo import synthesize
    from rankly.engine.offline.interactions import build_training_data
    from rankly.engine.plugins import collect_all, make_plugin_manager

    interactions, items = synthesize(n_users=200, n_items=300, seed=seed)
    data = build_training_data(interactions, items)
    trainers = collect_all(make_plugin_manager())["trainers"].entries
    parts = [trainers[name].fit(data, {}) for name in ("pop", "itemknn")]
    fp = fingerprint(data.users.history_items, data.catalog.categories)
    return save_model(out, data.catalog, data.users, parts, data_fingerprint=fp,
                      version=version)


@pytest.fixture(scope="session")
def redis_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained artifact directory (version ``v1``), built once per session."""
    return build_artifacts(tmp_path_factory.mktemp("artifacts") / "v1", version="v1")


@pytest.fixture
def spare_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """An unstarted redis-server on a free port: a dead Redis until the test starts it."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server/redis-cli not installed (Debian: apt-get install redis-server)")
    server = RedisServer(free_port(), tmp_path / "spare")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def artifact_builder():
    """``artifact_builder(out_dir, seed=, version=)``: train and save a small model."""
    return build_artifacts


@pytest.fixture(scope="session", autouse=True)
def _app_startup_without_a_full_collection() -> Iterator[None]:
    """Apps started in this process freeze the heap without a full collection first.

    ``create_app``'s lifespan runs ``gc.collect()`` before ``gc.freeze()`` so a server does not
    freeze its start-up garbage. In a test process the heap holds every imported test module
    and library, so that collection walks it once per app, and the suite starts hundreds of
    apps: most of the unit tier's time. Servers started as subprocesses keep the collection.
    """
    import gc
    import types

    from rankly.engine.serving import app

    shim = types.SimpleNamespace(collect=lambda generation=2: 0, freeze=gc.freeze,
                                 unfreeze=gc.unfreeze)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(app, "gc", shim)
        yield
