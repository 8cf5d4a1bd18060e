"""``rankly recommend``: every (or each listed) user's top items as JSON lines, ranked in this
process or by Ray workers (``--engine ray``, :mod:`.batch_ray`); the arguments of the engine
choice are shared with ``rankly evaluate``.

The batch work itself is :mod:`.batch`; this module is the command around it, so that
:mod:`.batch_ray` (which imports :mod:`.batch`) and :mod:`.batch` import each other in no
direction but one.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..config import load_settings, positive_int

# --- CLI: `rankly recommend` -----------------------------------------------------------------


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--engine local|ray`` and ``--address`` (rankly evaluate, rankly recommend)."""
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: this process; ray: blocks of users over Ray workers "
                             "(pip install 'rankly[ray]')")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (default: start a local Ray, 2 CPUs)")
    parser.add_argument("--ray-workers", type=positive_int, default=None,
                        help="Ray workers (default: the CPUs Ray has)")


def add_recommend_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``rankly recommend``."""
    parser.add_argument("--artifacts", required=True, help="a `rankly train` output directory")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", help="file with one user id per line")
    who.add_argument("--all", action="store_true", help="every user of the model")
    parser.add_argument("--n", type=positive_int, default=10,
                        help="items per user (default 10; at least 1, no upper limit: a batch "
                             "job is not bound by the HTTP limits.n_max)")
    parser.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=None,
                        help="drop items the user already has (default: the configured "
                             "pipeline.exclude_seen, true)")
    parser.add_argument("--config", default=None, help="settings file (pipeline, plugin options)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_arguments(parser)


@contextlib.contextmanager
def engine_from_args(args: argparse.Namespace, stay_joined: bool = False) -> Iterator[Any]:
    """The engine ``--engine`` names: None for this process, else a started Ray engine
    (``stay_joined``: see :meth:`.batch_ray.RayEngine.start`)."""
    if getattr(args, "engine", "local") == "local":
        yield None
        return
    from .batch_ray import RayEngine

    with RayEngine.start(args.address, workers=args.ray_workers,
                         stay_joined=stay_joined) as engine:
        yield engine


def run_recommend(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        if getattr(args, "engine", "local") == "local":
            from ..model import load_model

            model = load_model(args.artifacts)  # memory-mapped: cheap, and checks the path early
        else:
            # NOTE: the Ray driver asks for the workers before it imports NumPy and maps the
            # model (in users(), while they start); a wrong path still fails before Ray starts
            check_artifacts(args.artifacts)
            model = None
        with contextlib.ExitStack() as stack:
            # opened now (a wrong path fails before Ray starts), read in users()
            try:
                fh = None if args.all else stack.enter_context(open(args.users, "rb"))
            except OSError as exc:
                raise OSError(f"--users {args.users}: {exc.strerror or exc}") from None

            def users() -> list[str]:
                if fh is None:
                    from ..model import load_model

                    mapped = model if model is not None else load_model(args.artifacts)
                    return [str(u) for u in mapped.users.user_ids.tolist()]
                return read_user_ids(fh, args.users)

            progress = None if args.quiet else sys.stderr
            # a process that ends with the command need not leave a joined Ray first
            with engine_from_args(args, getattr(args, "ends_process", False)) as engine:
                if engine is None:
                    from .batch import recommend

                    count = recommend(model, users(), args.n, settings, args.exclude_seen,
                                      progress=progress)
                else:
                    # NOTE: users() runs once the workers are starting: a long list is read
                    # while they load
                    count = engine.recommend(args.artifacts, users, args.n, settings,
                                             args.exclude_seen, sys.stdout, progress=progress)
    except BrokenPipeError:
        raise  # the reader went away (`| head`): the CLI ends quietly, as for other commands
    except KeyboardInterrupt:
        # the lines written so far are whole, but a file of them looks like a finished run
        print("error: interrupted: the output holds only the users written before",
              file=sys.stderr)
        return 128 + 2  # SIGINT, as a shell reports it
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{count} users written", file=sys.stderr)
    if engine is not None and engine.joined:
        from .batch_ray import end_process

        end_process(0)
    return 0


def read_user_ids(fh: IO[bytes], name: str) -> list[str]:
    """The user ids of a ``--users`` file opened in binary: one per line, blank lines
    skipped, surrounding whitespace dropped; a UTF-8 byte order mark (editors and
    spreadsheets write one) is not part of the first id. Raise ValueError naming the file
    and the line when a line is not UTF-8."""
    ids = []
    for number, raw in enumerate(fh, 1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError:
            raise ValueError(f"--users {name}: line {number} is not UTF-8 text") from None
        if line:
            ids.append(line)
    return ids


def check_artifacts(path: str | Path) -> None:
    """Raise what :func:`..model.load_model` raises for a directory without a manifest,
    without importing the model's module (and NumPy with it) when there is one: the Ray
    driver and `rankly serve` check the path before they start anything."""
    if not (Path(path) / "manifest.json").is_file():
        from ..model import load_model

        load_model(path)
