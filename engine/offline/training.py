"""`rankly train`: load interactions, fit every configured trainer, write a model artifact."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..config import PipelineSettings, Settings, load_settings
from ..model import fingerprint, save_model
from ..plugins import (
    PluginError,
    check_plugin_sections,
    collect_all,
    component_options,
    make_plugin_manager,
)
from ..types import DataRefused, ModelPart
from . import datasets
from . import progress as progress_bars
from .interactions import TrainingData, build_training_data

#: What `rankly train` fits without --trainers. "pop" always runs: the server's cold-start
#: fallback needs it. "blend" chooses the hyper-parameters of the parts after it (its
#: ``tuned_options``), so it comes before them.
DEFAULT_TRAINERS = ("pop", "blend", "ease", "itemknn")
#: The pipeline settings these parts are meant for: the default ones (docs/evaluation.md).
RECOMMENDED_PIPELINE = {"candidates": PipelineSettings().candidates,
                        "scorers": PipelineSettings().scorers,
                        "rerankers": PipelineSettings().rerankers}


def trainer_options(name: str, tuned: Mapping[str, Mapping[str, Any]], settings: Settings,
                    given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A trainer's options: what an earlier part tuned for it, overridden by
    ``settings.plugin_options(name)``, overridden by ``given``: an explicit setting wins."""
    return {**tuned.get(name, {}), **settings.plugin_options(name), **dict(given or {})}


def absorb_tuned(tuned: dict[str, dict[str, Any]], part: ModelPart) -> None:
    """Add the options ``part`` chose for later trainers (``params["tuned_options"]``)."""
    for target, chosen in dict(part.params.get("tuned_options") or {}).items():
        tuned.setdefault(str(target), {}).update(chosen)


def train(data: TrainingData, trainers: Sequence[str], settings: Settings,
          options: Mapping[str, Mapping[str, Any]] | None = None, pm: Any = None,
          progress: IO[str] | None = None, validation: str | None = None) -> list[ModelPart]:
    """Fit each trainer on ``data`` in order; return the parts (with ``seconds`` metrics).

    ``progress``: the stream of a progress bar (drawn only when it is a terminal), or None.

    Options per trainer: what an earlier part chose for it (a part's
    ``params["tuned_options"][name]``, e.g. the lambda the blend validated for EASE),
    overridden by ``settings.plugin_options(name)``, overridden by ``options[name]``: an
    explicit setting always wins. ``validation`` (``--validation``) is given to every trainer
    that declares a ``validation`` option (those that choose their hyper-parameters on
    hold-outs) unless ``options`` sets it. "pop" is added first when missing. A trainer that
    refuses the data (:class:`~rankly.engine.api.DataRefused`: EASE on a catalog too large for
    its dense inverse) is skipped with a note; any other error (a bad option value) fails.
    """
    pm = pm if pm is not None else make_plugin_manager(settings.load_entrypoints,
                                                       settings.blocked_plugins)
    registries = collect_all(pm)
    registry = registries["trainers"]
    # strict, as serving is: a [plugins.*] section or option key no plugin declared, or a
    # value that does not parse as its default's type, fails before any data is fitted
    settings = settings.replace(plugins=check_plugin_sections("plugins", settings.plugins,
                                                              registries))
    options = {name: component_options(name, given, registries, where=f"options[{name!r}]")
               for name, given in (options or {}).items()}
    names = list(dict.fromkeys(["pop", *trainers]))
    parts = []
    owners: list[str] = []  # the trainer of each part
    tuned: dict[str, dict[str, Any]] = {}
    shown = progress_bars.bar(len(names), "training", quiet=progress is None, unit="part",
                              stream=progress)
    for name in names:
        shown.set_description_str(f"training {name}")
        given = dict(options.get(name, {}))
        if validation and "validation" in (registry.options.get(name) or {}):
            given.setdefault("validation", validation)
        opts = trainer_options(name, tuned, settings, given)
        started = time.perf_counter()
        try:
            part = registry.get(name).fit(data, opts)
        except DataRefused as exc:
            if name not in trainers or name == "pop":
                raise
            shown.write(f"skipped {name}: {exc}", file=progress or sys.stderr)
            shown.update(1)
            continue
        except (ValueError, OSError):
            raise  # a bad option value, a file: the command names it
        except Exception as exc:
            # a plugin's own bug (KeyError, IndexError, ...): one line naming the trainer,
            # not a traceback
            raise PluginError(f"trainer {name!r} failed: {type(exc).__name__}: {exc}"
                              ) from exc
        check_part(name, part, {p.name: owner for p, owner in zip(parts, owners, strict=True)})
        owners.append(name)
        seconds = round(time.perf_counter() - started, 3)
        absorb_tuned(tuned, part)
        parts.append(ModelPart(part.name, part.params, part.arrays,
                               {**part.metrics, "seconds": seconds}))
        shown.update(1)
    shown.close()
    return parts


def check_part(trainer: str, part: Any, earlier: Mapping[str, str]) -> None:
    """Raise :class:`PluginError` (one line naming the trainer) unless ``part`` can be
    written into an artifact: a ModelPart of NumPy arrays by name with JSON params and
    metrics, named apart from the parts before it (``earlier``: part name -> trainer), which
    it would otherwise overwrite. ``rankly plugins check NAME --train NAME`` says more."""
    def refuse(problem: str) -> PluginError:
        return PluginError(f"trainer {trainer!r} returned {problem}; `rankly plugins check "
                           f"--train {trainer}` checks a trainer")

    if not isinstance(part, ModelPart):
        raise refuse(f"{type(part).__name__}, not a ModelPart")
    if not isinstance(part.name, str) or not part.name:
        raise refuse(f"a part named {part.name!r}, not a non-empty string")
    if part.name in earlier:
        raise refuse(f"a part named {part.name!r}, which trainer {earlier[part.name]!r} "
                     "already wrote")
    if not isinstance(part.arrays, Mapping) or not all(
            isinstance(k, str) and isinstance(v, np.ndarray) for k, v in part.arrays.items()):
        raise refuse("arrays that are not NumPy arrays by name")
    try:
        json.dumps({"params": dict(part.params), "metrics": dict(part.metrics)},
                   allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise refuse(f"params or metrics that are not JSON ({exc})") from None


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
        extra = ", ".join(f"{k}={v}" for k, v in p.metrics.items()
                          if k not in ("seconds", "report") and not isinstance(v, dict))
        lines.append(f"    {p.name:<8} {p.metrics.get('seconds', 0):>7.2f}s {size:>8.1f} MiB"
                     f"  {extra}")
        lines.extend(f"             {line}" for line in p.metrics.get("report", ()))
    trained = {p.name for p in parts}
    if {"blend", "ease"} <= trained:
        lines.append("  serve with: pipeline.candidates = "
                     f"{list(RECOMMENDED_PIPELINE['candidates'])}, pipeline.scorers = "
                     f"{list(RECOMMENDED_PIPELINE['scorers'])} (the default)")
    else:  # the default pipeline needs blend and ease: name what was trained instead
        lines.append("  serve with: a pipeline of the components these parts serve "
                     f"({', '.join(sorted(trained))}); the default one needs blend and ease "
                     "(`rankly plugins` lists each component's part)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``rankly train``."""
    datasets.add_input_arguments(parser)
    parser.add_argument("--out", required=True, help="artifact directory to write")
    parser.add_argument("--trainers", default=",".join(DEFAULT_TRAINERS),
                        help=f"comma-separated trainer names (default: "
                             f"{','.join(DEFAULT_TRAINERS)}; pop is always added)")
    parser.add_argument("--config", default=None, help="settings file (plugin options)")
    parser.add_argument("--validation", default=None,
                        choices=("robust", "random", "last", "temporal"),
                        help="hold-out shape(s) the trainers choose hyper-parameters on "
                             "(blend, itemknn, als): robust "
                             "(default: good on every shape), random (20%% of each user's "
                             "events), last (each user's last event), temporal (the last "
                             "20%% of all events). Pick the one shape that matches how your "
                             "product is judged (next item: last; what comes next for "
                             "everyone: temporal) to win more on it; the training report "
                             "names what robust gave up per shape")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def check_out_dir(path: str | Path) -> None:
    """Raise ValueError naming ``--out`` when ``path`` cannot become the artifact directory
    (a file, under a file, a parent without write permission): checked before loading and
    training, so that a long training is not thrown away at its last step."""
    if not str(path).strip():
        raise ValueError("--out is empty")  # Path("") would be the current directory
    out = Path(path)
    if out.exists():
        problem = None if out.is_dir() else "exists and is not a directory"
        if problem is None and not os.access(out, os.W_OK | os.X_OK):
            problem = "permission denied"
    else:
        # the nearest existing ancestor is where save_model's mkdir starts creating
        above = next(p for p in out.absolute().parents if p.exists())
        if not above.is_dir():
            problem = f"{above} is not a directory"
        elif not os.access(above, os.W_OK | os.X_OK):
            problem = f"permission denied in {above}"
        else:
            problem = None
    if problem:
        raise ValueError(f"--out {path}: {problem}")


def run(args: argparse.Namespace, out: IO[str] = sys.stdout) -> int:
    started = time.perf_counter()
    try:
        check_out_dir(args.out)
        settings = load_settings(args.config)
        ds = datasets.load_from_args(args, event_types=settings.event_types)
        data = build_training_data(ds.interactions, ds.items)
        trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
        quiet = getattr(args, "quiet", False)
        parts = train(data, trainers, settings, progress=None if quiet else sys.stderr,
                      validation=getattr(args, "validation", None))
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
