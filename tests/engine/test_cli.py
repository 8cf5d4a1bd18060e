"""The `rankly` command line through real processes: plugins listing and the demo server."""

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rankly(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rankly.engine.cli", *args], capture_output=True,
                          text=True, timeout=120, **kw)


def test_plugins_lists_builtins_with_hooks_and_distribution():
    out = rankly("plugins", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["popularity"]["distribution"].startswith("rankly ")
    assert "register_scorers" in rows["popularity"]["hooks"]
    assert rows["diversity"]["components"] == {"rerankers": ["diversity"]}


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_demo_serves_personalized_recommendations(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rankly.engine.cli", "demo", "--port", str(port), "--dir",
         str(tmp_path / "art")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "RANKLY_CONFIG": ""},
        cwd=tmp_path,  # the demo's event log (./.rankly) stays out of the checkout
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300  # trains five models first; slow on a busy CI box
        while True:
            try:
                get_json(base + "/health")
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "demo did not start within 300 s"
                time.sleep(0.5)
        body = get_json(base + "/recommendations?user_id=1&n=5")
        assert body["fallback"] is None and len(body["items"]) == 5
        assert all(it["reasons"] for it in body["items"])
        other = get_json(base + "/recommendations?user_id=2&n=5")
        assert [i["item_id"] for i in other["items"]] != [i["item_id"] for i in body["items"]]
        assert get_json(base + "/items/1/similar?n=3")["items"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "curl 'http://127.0.0.1:" in out


def test_serve_names_a_directory_without_a_model_before_starting(tmp_path, capsys):
    assert cli.main(["serve", "--artifacts", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "nothing has no manifest.json: train one with `rankly train`" in err


def test_simulate_names_a_directory_without_a_model(tmp_path, capsys):
    # cli.main turns a model directory that holds no model into its message, exit 2, for
    # any command that does not catch it itself
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["simulate", "--url", "http://127.0.0.1:9", "--requests", "1",
                     "--artifacts", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"rankly simulate: {empty} has no manifest.json" in err
    assert "Traceback" not in err


def test_a_file_error_names_the_file_instead_of_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANKLY_DATA_DIR", str(tmp_path / "data"))
    target = tmp_path / "no-such-dir" / "events.csv"
    assert cli.main(["export-events", "--out", str(target)]) == 2
    assert f"rankly export-events: {target}: No such file or directory" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("command", [["demo"], ["serve", "--artifacts", "."]])
def test_a_port_out_of_range_is_refused_before_any_work(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*command, "--port", "0"])
    assert exc.value.code == 2
    assert "argument --port: must be in 1..65535, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("hours", ["0", "-1"])
def test_serve_refuses_an_idempotency_window_that_is_not_positive_before_starting(
        tmp_path, capsys, monkeypatch, hours):
    from rankly.engine.offline.demo import train_into

    train_into(tmp_path / "model", 7)
    monkeypatch.setenv("RANKLY_PLUGINS__EVENTS__IDEMPOTENCY_WINDOW_HOURS", hours)
    assert cli.main(["serve", "--artifacts", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert "idempotency_window_hours must be a positive number" in err
