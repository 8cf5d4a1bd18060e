"""``schemathesis run --checks all`` as a user would run it, against a real ``rankly serve``.

Positive and negative data, the coverage, fuzzing and stateful phases, every check, the admin
token given; a bounded number of examples per operation. Nothing here tunes schemathesis to
the API: a failure means the server and its /openapi.json disagree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.serving.test_multiworker_metrics import free_port, stop, wait_ready

pytestmark = pytest.mark.slow
SCHEMATHESIS = shutil.which("schemathesis") or shutil.which("st")
if SCHEMATHESIS is None:
    pytest.skip("schemathesis not installed (pip install -e '.[test]')", allow_module_level=True)

TOKEN = "cli-fuzz-admin-token-0123456789"
MAX_EXAMPLES = int(os.environ.get("RANKLY_SCHEMATHESIS_EXAMPLES", "15"))


@pytest.fixture
def server(artifacts: Path, tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RANKLY_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env["RANKLY_ADMIN_TOKEN"] = TOKEN
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rankly.engine.cli", "serve", "--artifacts", str(artifacts),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url, tmp_path / "server.log"
    finally:
        stop(proc)
        log.close()


@pytest.mark.parametrize("seed", [1, 2])
def test_schemathesis_finds_nothing_with_all_checks(server, tmp_path, seed):
    url, server_log = server
    run = subprocess.run(
        [SCHEMATHESIS, "run", f"{url}/openapi.json", "--checks", "all", "--mode", "all",
         "-H", f"Authorization: Bearer {TOKEN}", "--max-examples", str(MAX_EXAMPLES),
         "--seed", str(seed), "--no-color", "--generation-database", "none"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout, run.stdout[-3000:]
    assert "Traceback" not in server_log.read_text(errors="replace")
