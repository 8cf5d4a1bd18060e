"""A real ``rankly serve --workers 2``: /metrics counts the requests of both workers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from rankly.engine.pipeline import quality

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"rankly serve exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("rankly serve did not become ready")


def stop(proc: subprocess.Popen) -> None:
    """SIGINT to the supervisor PID (uvicorn stops its workers), then wait for it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session, started below
            proc.wait(timeout=5)


def sample(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """All samples of ``name`` whose labels include ``labels``."""
    out = []
    for m in re.finditer(rf"^{name}(?:\{{(.*?)\}})? (\S+)$", text, re.M):
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            out.append((got, float(m.group(2))))
    return out


@pytest.fixture
def server(artifacts: Path, tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RANKLY_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env["TMPDIR"] = str(tmp_path)  # where rankly serve makes its metrics directory
    proc = subprocess.Popen(
        [sys.executable, "-m", "rankly.engine.cli", "serve", "--artifacts", str(artifacts),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        cwd=tmp_path,  # its event log (./.rankly) stays out of the checkout
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url, proc, tmp_path
    finally:
        stop(proc)


def test_metrics_count_the_requests_of_every_worker(server):
    url, proc, tmp = server

    def one(i: int) -> int:
        # a new connection per request, so the kernel hands them to either worker
        r = httpx.get(f"{url}/recommendations", params={"user_id": f"mw-{i}", "n": 5},
                      headers={"connection": "close"}, timeout=10.0)
        return r.status_code

    sent, serving = 0, set()
    with ThreadPoolExecutor(8) as pool:
        while len(serving) < 2 and sent < 2000:
            assert set(pool.map(one, range(sent, sent + 100))) == {200}
            sent += 100
            text = httpx.get(f"{url}/metrics", timeout=10.0).text
            serving = {labels["pid"] for labels, v in sample(text, "rankly_quality_window_slates")
                       if v > 0}
    assert len(serving) == 2, "every request went to one worker"
    text = httpx.get(f"{url}/metrics", timeout=10.0).text
    [(_, ok)] = sample(text, "rankly_http_requests_total", route="/recommendations",
                       status="200")
    assert ok == sent
    [(_, timed)] = sample(text, "rankly_http_request_duration_seconds_count",
                          route="/recommendations")
    assert timed == sent
    # distinct users: every answer was computed, none cached. Each worker folds its served
    # slates into its quality gauges every quality.EXPORT_SECONDS, so the last ones can show
    # a moment later
    deadline = time.monotonic() + 10 * quality.EXPORT_SECONDS
    while True:
        text = httpx.get(f"{url}/metrics", timeout=10.0).text
        slates = sum(v for _, v in sample(text, "rankly_quality_window_slates"))
        if slates == sent or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert slates == sent
    [(_, cold)] = sample(text, "rankly_fallbacks_total", reason="cold_start")
    assert cold == sent
    stop(proc)
    assert not list(tmp.glob("rankly-metrics-*")), "the metrics directory outlived the server"
