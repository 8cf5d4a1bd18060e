"""Seconds from `rankly demo` starting to its first personalized answer: first and second start.

Run (about 30 s on 2 cores; uses a temporary artifacts directory, port 8765 by default):

    python benchmarks/demo_start.py [--port 8765]

Start 1 trains the demo shop into the empty directory; start 2 reuses it. Each start is a
fresh `rankly demo --quiet` process, polled every 50 ms with
``GET /recommendations?user_id=1&n=5`` until it answers 200 with ``fallback: null``; the
process is then stopped (SIGINT, by its PID). Results go to benchmarks/results/demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def first_answer(artifacts: str, port: int, timeout: float = 120.0) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "rankly.engine.cli", "demo", "--quiet",
                             "--artifacts", artifacts, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/recommendations?user_id=1&n=5"
        while time.perf_counter() - started < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"rankly demo exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    body = json.loads(resp.read())
                    if resp.status == 200 and body.get("fallback") is None:
                        return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"no answer within {timeout} s")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", default=str(HERE / "results" / "demo.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = os.path.join(tmp, "demo")
        first = first_answer(artifacts, args.port)
        second = first_answer(artifacts, args.port)
    report = {"first_start_s": round(first, 2), "second_start_s": round(second, 2),
              "load": os.getloadavg()}
    print(f"first start (trains): {first:.1f} s to the first answer; second start (reuses): "
          f"{second:.1f} s")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
