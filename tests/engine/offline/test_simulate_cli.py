"""`rankly simulate --url`: simulated users drive a real `rankly serve` process over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from rankly.engine import cli
from rankly.engine.feedback.slates import load_feedback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(artifacts, tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKLY_")}
    env.update({"RANKLY_ARTIFACTS": str(artifacts), "RANKLY_DATA_DIR": str(tmp_path / "data"),
                "RANKLY_PORT": str(port), "RANKLY_WORKERS": "1", "RANKLY_LOG_LEVEL": "warning",
                "RANKLY_EXPLORATION__RATE": "0.5"})
    proc = subprocess.Popen([sys.executable, "-m", "rankly.engine.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, "rankly serve exited"
            try:
                with urllib.request.urlopen(url + "/health", timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        yield url, tmp_path / "data" / "events" / "events.jsonl"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.mark.slow
def test_simulate_drives_a_server_and_its_log_has_the_outcomes(server, artifacts, capsys):
    url, log = server
    assert cli.main(["simulate", "--url", url, "--artifacts", str(artifacts),
                     "--requests", "60", "--seconds", "30", "--users", "50", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["requests"] == 60 and doc["impressions"] == 600
    time.sleep(0.5)  # impressions are flushed every 0.2 s
    feedback = load_feedback(log)
    assert len(feedback.slates) == 60
    assert sum(int(s.clicks.sum()) for s in feedback.slates) == doc["clicks"]
    assert sum(s.head() == 10 for s in feedback.slates) == 60  # explored: propensities < 1


@pytest.mark.parametrize("args,named", [
    (["--requests", "0"], "argument --requests: must be at least 1, got 0"),
    (["--n", "-2"], "argument --n: must be at least 1, got -2"),
    (["--seconds", "0"], "argument --seconds: must be a finite number above 0"),
])
def test_simulate_refuses_bad_bounds_naming_the_option(tmp_path, capsys, args, named):
    with pytest.raises(SystemExit) as exc:
        cli.main(["simulate", "--url", "http://127.0.0.1:9", "--artifacts", str(tmp_path),
                  *args])
    assert exc.value.code == 2 and named in capsys.readouterr().err
