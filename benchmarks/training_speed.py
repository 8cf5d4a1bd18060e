"""`rankly train` against the model fits it is made of, measured in the same run.

Run (datasets from $RANKLY_DATASETS or ../shared/datasets; about a minute on 2 cores):

    python benchmarks/training_speed.py [--datasets ml-100k,ml-latest-small] [--rounds 3]

For each dataset and round, in this order: one fit of implicit's ALS (its default
hyper-parameters: 100 factors, regularization 0.01, 15 iterations; one thread, ``num_threads=1``
and one BLAS thread, as issue 15 measured it) and one fit of a plain EASE (lambda 500, a
float64 ``numpy.linalg.inv`` of the Gram matrix, one BLAS thread), both in a child process on
the data `rankly train` reads; then `rankly train --quiet` as a user runs it (a
fresh process: data loading, the blend's validation, every default part, writing the
artifacts), with its wall time and peak RSS. The reported ratio is the median train time over
the median (ALS + EASE) time, so machine speed and load cancel out; the median of the rounds'
own ratios (each pairs measurements taken seconds apart) is printed beside it, and the load
average before and after is recorded. Results go to benchmarks/results/training.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("RANKLY_DATASETS", HERE.parent.parent / "shared" / "datasets"))


def peer_fits(path: Path) -> tuple[float, float]:
    """Seconds of one implicit ALS fit and one plain EASE fit on the dataset's matrix."""
    from implicit.cpu.als import AlternatingLeastSquares

    from rankly.engine.offline import datasets
    from rankly.engine.offline.interactions import build_training_data

    data = build_training_data(datasets.load(path).interactions)
    x = data.matrix.tocsr(copy=True)
    x.data[:] = 1.0
    with threadpool_limits(1, "blas"):
        started = time.perf_counter()
        AlternatingLeastSquares(random_state=0, num_threads=1,
                                calculate_training_loss=False).fit(x, show_progress=False)
        als = time.perf_counter() - started
        started = time.perf_counter()
        g = (x.T @ x).toarray().astype(np.float64)
        g[np.diag_indices_from(g)] += 500.0
        p = np.linalg.inv(g)
        b = p / -np.diag(p)
        b[np.diag_indices_from(b)] = 0.0
        ease = time.perf_counter() - started
    return als, ease


def rankly_train(path: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of `rankly train --quiet` in a fresh process.

    The peak is measured from inside the child at exit (``RUSAGE_SELF``).
    """
    code = ("import resource, sys; from rankly.engine.cli import main; rc = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
            "sys.exit(rc)")
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code, "train", "--quiet",
                               "--interactions", str(path), "--out", out], check=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - started
    return seconds, int(proc.stderr.strip().splitlines()[-1]) / 1024  # KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="ml-100k,ml-latest-small")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "training.json"))
    args = ap.parse_args()
    report = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}, "datasets": {}}
    for name in [d for d in args.datasets.split(",") if d]:
        path = SHARED / name
        if not path.exists():
            print(f"skip {name}: not under {SHARED}", file=sys.stderr)
            continue
        rounds = []
        for r in range(args.rounds):
            # the peers run in their own process too, so this one stays small and a child's
            # peak RSS is its own
            peers = subprocess.run(
                [sys.executable, "-c", "import json, sys; sys.path.insert(0, sys.argv[1]); "
                 "import training_speed as t; print(json.dumps(t.peer_fits(t.Path(sys.argv[2]))))",
                 str(HERE), str(path)], check=True, capture_output=True, text=True)
            als, ease = json.loads(peers.stdout.strip().splitlines()[-1])
            train, rss = rankly_train(path)
            rounds.append({"als": als, "ease": ease, "train": train, "peak_rss_mib": rss})
            print(f"{name} round {r}: ALS {als:.2f}s, EASE {ease:.2f}s, rankly train "
                  f"{train:.2f}s ({train / (als + ease):.1f}x), peak RSS {rss:.0f} MiB",
                  file=sys.stderr)
        med = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
        med["ratio"] = med["train"] / (med["als"] + med["ease"])
        # each round's ratio pairs measurements taken seconds apart, under the same load
        med["round_ratio"] = statistics.median(x["train"] / (x["als"] + x["ease"])
                                               for x in rounds)
        report["datasets"][name] = {"rounds": rounds, "median": med}
        print(f"{name}: rankly train {med['train']:.2f}s = {med['ratio']:.2f}x "
              f"(ALS {med['als']:.2f}s + EASE {med['ease']:.2f}s; median round ratio "
              f"{med['round_ratio']:.2f}x), peak RSS {med['peak_rss_mib']:.0f} MiB")
    report["machine"]["load_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
