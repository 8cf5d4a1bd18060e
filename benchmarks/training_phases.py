"""Where `rankly train` spends its time, phase by phase (issue 15 notes).

    python benchmarks/training_phases.py [--dataset ml-100k] [--rounds 3]

In one fresh process, as `rankly train` runs them: imports, loading the dataset, encoding it,
then each default trainer (with the blend's own steps: carving its hold-outs, the EASE
lambda/dropout walk, judging candidates, summed over its threads), saving the artifacts.
Round 1 is what a command pays (first calls, lazy imports); later rounds show what is left
once those are paid. Wall times from ``time.perf_counter``; the blend's steps run on several
threads, so they overlap and do not add up to the blend's time. Read it next to
``benchmarks/training_speed.py``, which times the whole command against the peers' fits.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from rankly.engine.config import load_settings  # noqa: E402
from rankly.engine.model import fingerprint, save_model  # noqa: E402
from rankly.engine.offline import datasets, training  # noqa: E402
from rankly.engine.offline.interactions import build_training_data  # noqa: E402
from rankly.plugins.scorers import blend  # noqa: E402

IMPORTED = time.perf_counter()
SHARED = Path(os.environ.get("RANKLY_DATASETS",
                             Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"))


def timed(owner: object, name: str, totals: dict[str, float], label: str) -> None:
    """Wrap ``owner.name`` so its calls add their wall time to ``totals[label]``."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - start

    setattr(owner, name, staticmethod(wrapper) if isinstance(owner, type) else wrapper)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    steps: dict[str, float] = {}
    timed(blend, "make_holdout", steps, "blend: hold-outs")
    timed(blend.BlendTrainer, "_tune_ease", steps, "blend: EASE walk")
    timed(blend, "judge", steps, "blend: judging")
    print(f"imports {IMPORTED - STARTED:.3f} s")
    for r in range(1, args.rounds + 1):
        steps.clear()
        t0 = time.perf_counter()
        ds = datasets.load(SHARED / args.dataset)
        t1 = time.perf_counter()
        data = build_training_data(ds.interactions, ds.items)
        t2 = time.perf_counter()
        parts = training.train(data, training.DEFAULT_TRAINERS, load_settings(environ={}))
        t3 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            save_model(out, data.catalog, data.users, parts,
                       data_fingerprint=fingerprint(data.user_idx, data.item_idx))
        t4 = time.perf_counter()
        fits = ", ".join(f"{p.name} {p.metrics['seconds']:.3f}" for p in parts)
        inner = ", ".join(f"{k} {v:.3f}" for k, v in steps.items())
        print(f"round {r}: load {t1 - t0:.3f}, encode {t2 - t1:.3f}, train {t3 - t2:.3f} "
              f"({fits}; {inner}), save {t4 - t3:.3f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
