"""Same-run A/B over HTTP: the selection on the event loop vs on a worker thread.

    python benchmarks/selection_ab.py [--connections 64] [--rounds 4] [--duration 4]

Two `rankly serve --workers 1` processes on the ML-100K artifacts of pipeline_fixtures, caches
off, one with ``pipeline.inline_selection = always`` and one with ``never`` (the default plan
is all built in, so ``auto`` selects on the loop). wrk (one thread) runs load.py's request mix
against them in interleaved rounds, alternating which goes first, so machine noise hits both
alike. Prints req/s, P95 and P99 per round and the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402
import pipeline_fixtures as fx  # noqa: E402

from rankly.engine.model import load_model  # noqa: E402

MODES = {"thread": "never", "loop": "always"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    args = ap.parse_args(argv)
    art = fx.ml100k_artifacts()
    users = np.asarray(load_model(art).users.user_ids).astype(str)
    mix = Path(tempfile.mkdtemp(prefix="rankly-ab-")) / "mix.txt"
    mix.write_text("\n".join(load.request_mix(users, 4000, seed=5)))
    with contextlib.ExitStack() as stack:
        ports = {}
        for name, mode in MODES.items():
            port = load.free_port()
            cmd, base = load.rankly_cmd(art, port, 1)
            stack.enter_context(load.server(cmd, {**base, "RANKLY_CACHE__TIERS": "",
                                                  "RANKLY_PIPELINE__INLINE_SELECTION": mode},
                                            port))
            load.run_wrk(port, mix, args.connections, 1.0)  # warm
            ports[name] = port
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in MODES}
        for r in range(args.rounds):
            for name in (list(MODES) if r % 2 == 0 else list(reversed(MODES))):
                runs[name].append(load.run_wrk(ports[name], mix, args.connections,
                                               args.duration))
    for name, rs in runs.items():
        print(f"{name:6s} c{args.connections}: req/s {[round(x['rps']) for x in rs]} "
              f"(median {np.median([x['rps'] for x in rs]):.0f}), "
              f"P95 {[round(x['p95'], 1) for x in rs]} ms, "
              f"P99 {[round(x['p99'], 1) for x in rs]} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
