"""`rankly train`: load interactions, fit every configured trainer, write a model artifact."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from rankly.engine import datasets
from rankly.engine.config import Settings, load_settings
from rankly.engine.interactions import TrainingData, build_training_data
from rankly.engine.model import fingerprint, save_model
from rankly.engine.plugins import PluginError, collect, make_plugin_manager
from rankly.engine.types import ModelPart

#: What `rankly train` fits without --trainers. "pop" always runs: the server's cold-start
#: fallback needs it. "blend" must come after the parts it weighs.
DEFAULT_TRAINERS = ("pop", "itemknn", "ease", "als", "blend")
#: The pipeline settings these parts are meant for (see docs/evaluation.md).
RECOMMENDED_PIPELINE = {
    "candidates": ("ease", "itemknn", "als", "popular"),
    "scorers": ("blend", "ease", "als", "popular"),
    "rerankers": ("diversity",),
}


def _progress(out: IO[str], step: int, total: int, label: str) -> None:
    """A one-line progress bar on a terminal, plain lines otherwise."""
    if out.isatty():
        filled = int(20 * step / max(total, 1))
        out.write(f"\r[{'#' * filled}{'.' * (20 - filled)}] {step}/{total} {label:<30}")
        if step == total:
            out.write("\n")
    else:
        out.write(f"[{step}/{total}] {label}\n")
    out.flush()


def train(data: TrainingData, trainers: Sequence[str], settings: Settings,
          options: Mapping[str, Mapping[str, Any]] | None = None, pm: Any = None,
          progress: IO[str] | None = None) -> list[ModelPart]:
    """Fit each trainer on ``data`` in order; return the parts (with ``seconds`` metrics).

    Options per trainer: ``settings.plugin_options(name)`` overridden by ``options[name]``.
    "pop" is added first when missing. EASE is skipped (with a note) when the catalog is too
    large for its dense inverse.
    """
    pm = pm if pm is not None else make_plugin_manager(settings.load_entrypoints,
                                                       settings.blocked_plugins)
    registry = collect(pm, "trainers")
    names = list(dict.fromkeys(["pop", *trainers]))
    parts = []
    for step, name in enumerate(names, 1):
        if progress is not None:
            _progress(progress, step - 1, len(names), f"training {name}")
        opts = {**settings.plugin_options(name), **dict((options or {}).get(name, {}))}
        started = time.perf_counter()
        try:
            part = registry.get(name).fit(data, opts)
        except ValueError as exc:
            if name not in trainers or name == "pop":
                raise
            if progress is not None:
                progress.write(f"\nskipped {name}: {exc}\n")
            continue
        seconds = round(time.perf_counter() - started, 3)
        parts.append(ModelPart(part.name, part.params, part.arrays,
                               {**part.metrics, "seconds": seconds}))
    if progress is not None:
        _progress(progress, len(names), len(names), "done")
    return parts


def summary(out_dir: Path, data: TrainingData, parts: Sequence[ModelPart], seconds: float) -> str:
    """The one-screen summary printed after training."""
    lines = [
        f"model written to {out_dir}",
        f"  data: {data.n_users} users, {data.n_items} items, {len(data.item_idx)} events",
        f"  total time: {seconds:.1f}s",
        "  parts:",
    ]
    for p in parts:
        size = sum(a.nbytes for a in p.arrays.values()) / 2**20
        extra = ", ".join(f"{k}={v}" for k, v in p.metrics.items() if k != "seconds")
        lines.append(f"    {p.name:<8} {p.metrics.get('seconds', 0):>7.2f}s {size:>8.1f} MiB"
                     f"  {extra}")
    lines.append("  serve with: pipeline.candidates = "
                 f"{list(RECOMMENDED_PIPELINE['candidates'])}, pipeline.scorers = "
                 f"{list(RECOMMENDED_PIPELINE['scorers'])}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``rankly train``."""
    datasets.add_input_arguments(parser)
    parser.add_argument("--out", required=True, help="artifact directory to write")
    parser.add_argument("--trainers", default=",".join(DEFAULT_TRAINERS),
                        help=f"comma-separated trainer names (default: "
                             f"{','.join(DEFAULT_TRAINERS)}; pop is always added)")
    parser.add_argument("--config", default=None, help="settings file (plugin options)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, out: IO[str] = sys.stdout) -> int:
    started = time.perf_counter()
    try:
        settings = load_settings(args.config)
        ds = datasets.load_from_args(args)
        data = build_training_data(ds.interactions, ds.items)
        trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
        parts = train(data, trainers, settings, progress=sys.stderr)
        path = save_model(
            args.out, data.catalog, data.users, parts,
            data_fingerprint=fingerprint(data.user_idx, data.item_idx, data.weights,
                                         data.timestamps),
            info={"source": str(args.interactions), "format": ds.format,
                  "trainers": [p.name for p in parts],
                  "load_reports": [r.summary() for r in ds.reports],
                  "recommended_pipeline": {k: list(v) for k, v in RECOMMENDED_PIPELINE.items()}},
        )
    except (datasets.DatasetError, PluginError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(path, data, parts, time.perf_counter() - started), file=out)
    return 0
