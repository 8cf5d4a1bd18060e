"""Fixtures that start real ``rankly serve`` and redis-server processes (see ``procs.py``).

Everything a test starts is stopped in ``finally`` by the PID it started (never by name).
Helpers live in ``procs.py``, put on the path here (``--import-mode=importlib`` leaves
sys.path alone and tests/ has no packages).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from procs import REDIS_CLI, REDIS_SERVER, Redis, Server, free_port  # noqa: E402


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory, artifact_builder) -> Path:
    """The small trained model every server here serves (200 users, 300 items)."""
    return artifact_builder(tmp_path_factory.mktemp("rel-artifacts") / "v1", version="v1")


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator:
    """``redis_factory(aof=False, port=None, start=True)``: redis-servers stopped afterwards."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server/redis-cli not installed (Debian: apt-get install redis-server)")
    made: list[Redis] = []

    def make(aof: bool = False, port: int | None = None, start: bool = True) -> Redis:
        r = Redis(port or free_port(), tmp_path / f"redis-{len(made)}", aof=aof)
        made.append(r)
        return r.start() if start else r

    try:
        yield make
    finally:
        for r in made:
            r.stop()


@pytest.fixture
def server_factory(tmp_path: Path, artifacts: Path) -> Iterator:
    """``server_factory(env={...}, start=True)``: rankly servers stopped (SIGKILL) afterwards."""
    made: list[Server] = []

    def make(env: dict[str, str] | None = None, start: bool = True,
             data_dir: Path | None = None) -> Server:
        s = Server(artifacts, data_dir or tmp_path / f"data-{len(made)}", dict(env or {}))
        made.append(s)
        return s.start() if start else s.launch()

    try:
        yield make
    finally:
        for s in made:
            s.stop(signal.SIGKILL)
