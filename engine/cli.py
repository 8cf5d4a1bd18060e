"""The ``rankly`` command line: demo, serve, plugins and the offline tools."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .config import ConfigError, Settings, load_settings, port_number, positive_float
from .plugins import PluginError

log = logging.getLogger("rankly")


#: Thread pools pinned to one thread in server processes (see :func:`_serve`).
SINGLE_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _serve(settings: Settings, env: dict[str, str], http: str = "auto") -> None:
    """Run uvicorn (httptools + uvloop when installed, or ``http`` when it names a
    parser; access log off on the hot path)."""
    import importlib.util

    import uvicorn

    from .serving.asgi import HTTP_PROTOCOLS

    # NOTE: each request is served single-threaded (#8): on 2 cores a multi-threaded BLAS call
    # next to an OpenMP region stalled ~10 ms. Set before workers import NumPy (an explicit
    # value in the environment wins); threadpoolctl covers libraries this process already
    # loaded (`rankly demo` trains first).
    os.environ.update({v: os.environ.get(v, "1") for v in SINGLE_THREAD_VARS})
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        threadpool_limits(1)
    os.environ.update(env)  # worker processes rebuild Settings from the same variables
    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    log.info("serving with uvicorn http=%s loop=%s workers=%d", http, loop, settings.workers)
    with _shared_metrics(settings.workers):
        uvicorn.run(
            "rankly.engine.serving.asgi:create_app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            access_log=settings.access_log,
            log_level=settings.log_level,
            http=HTTP_PROTOCOLS[http],  # uvicorn's, answering unparseable requests in JSON
            loop=loop,
        )


@contextlib.contextmanager
def _shared_metrics(workers: int) -> Iterator[None]:
    """With several workers, give prometheus-client a fresh multiprocess directory.

    Workers inherit ``PROMETHEUS_MULTIPROC_DIR`` and write their values there, so /metrics
    counts the whole server; the directory is deleted when the server stops, so a restart
    never adds up stale counts. A directory set by the operator is used and kept as is.
    """
    if workers <= 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    path = tempfile.mkdtemp(prefix="rankly-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(path, ignore_errors=True)


def _settings_env(args: argparse.Namespace) -> dict[str, str]:
    env = {}
    for flag, var in (("artifacts", "RANKLY_ARTIFACTS"), ("host", "RANKLY_HOST"),
                      ("port", "RANKLY_PORT"), ("workers", "RANKLY_WORKERS"),
                      ("config", "RANKLY_CONFIG")):
        value = getattr(args, flag, None)
        if value is not None:
            env[var] = str(value)
    return env


def cmd_serve(args: argparse.Namespace) -> int:
    from .plugins import check_configuration

    env = _settings_env(args)
    settings = load_settings(environ={**os.environ, **env})
    if settings.artifacts is None:
        # with a Redis store a worker starts from the version `rankly publish` made active
        # (Redis down: the one it served last); the embedded store has no published versions
        problem = ("--artifacts DIR is required with the embedded store (train one with "
                   "`rankly train`)" if settings.store_url == "memory"
                   else _published_model_problem(settings))
        if problem:
            print(f"rankly serve: {problem}", file=sys.stderr)
            return 2
        check_configuration(settings)
        _serve(settings.replace(workers=serving_workers(settings)), env, args.http)
        return 0
    from .model import ArtifactError
    from .offline.recommend import check_artifacts

    try:
        check_artifacts(settings.artifacts)  # before uvicorn starts: no traceback from a worker
    except ArtifactError as exc:
        print(f"rankly serve: {exc}", file=sys.stderr)
        return 2
    # every component name and option key, before uvicorn starts (a factory that raises
    # stops the server from its lifespan, naming the component)
    check_configuration(settings)
    _serve(settings.replace(workers=serving_workers(settings)), env, args.http)
    return 0


def _published_model_problem(settings: Settings) -> str | None:
    """Why a server without ``--artifacts`` would have no model on this Redis, or None: an
    active published version, or with Redis unreachable one downloaded here before."""
    import asyncio

    from .storage.publish import newest_cached_model
    from .storage.redis_store import RedisStore
    from .storage.store import StoreUnavailable

    async def active() -> str | None:
        store = RedisStore(settings.store_url, settings)
        try:
            return await store.versions().active()
        finally:
            await store.close()

    try:
        if asyncio.run(active()) is not None:
            return None
        reason = "Redis has no active model version"
    except StoreUnavailable as exc:
        reason = f"Redis is unavailable ({exc})"
    if newest_cached_model(settings) is not None:
        return None  # served from the copy downloaded before, until Redis answers
    return (f"{reason} and no version was downloaded here before: give --artifacts DIR, or "
            "publish one with `rankly publish --artifacts DIR`")


def serving_workers(settings: Settings) -> int:
    """``settings.workers``, or when it is 0 (the default) one worker per core this process
    may use with a shared (Redis) store, and 1 with the embedded store, whose online state
    and event log belong to one process."""
    if settings.workers:
        return settings.workers
    if settings.store_url == "memory":
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def cmd_demo(args: argparse.Namespace) -> int:
    from .offline import demo
    from .plugins import check_configuration

    out = Path(args.artifacts).expanduser() if args.artifacts else demo.default_dir(os.environ)
    env = {"RANKLY_ARTIFACTS": str(out.resolve()), "RANKLY_HOST": args.host,
           "RANKLY_PORT": str(args.port)}
    # a misspelt RANKLY_* setting or component name stops the demo before it trains
    settings = load_settings(environ={**os.environ, **env})
    check_configuration(settings)
    reason = "--retrain" if args.retrain else demo.stale_reason(out, args.seed)
    try:
        if reason is None:
            print(f"rankly demo: reusing the models in {out}, trained {demo.trained_at(out)} "
                  "(--retrain trains them again)")
        else:
            print(f"rankly demo: training models on a synthetic shop into {out} ({reason}) ...",
                  flush=True)
            # train()'s bar draws only on a terminal; --quiet turns it off there too
            print(demo.train_into(out, args.seed, progress=None if args.quiet else sys.stderr))
    except (demo.DemoError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(demo_urls(f"http://{settings.host}:{settings.port}"), flush=True)
    _serve(settings, env)
    return 0


def demo_urls(url: str) -> str:
    """What to try once the demo serves on ``url`` (users and items are numbered from 1)."""
    session = '{"session_items": ["1", "2"], "n": 5}'
    return "\n".join([
        f"\nServing on {url} (Ctrl-C stops). Try:",
        "  # recommendations for user 1, and the items similar to item 1",
        f"  curl '{url}/recommendations?user_id=1&n=5'",
        f"  curl '{url}/items/1/similar?n=5'",
        "  # an anonymous session's recommendations",
        f"  curl -X POST {url}/recommendations -H 'content-type: application/json' \\",
        f"       -d '{session}'",
        "  # live metrics and quality in a browser; Prometheus metrics; the API description",
        f"  {url}/dashboard",
        f"  curl {url}/metrics",
        f"  curl {url}/openapi.json   (readable: {url}/docs)",
        "",
    ])


def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import describe_plugins, make_plugin_manager

    if args.action == "check":
        return cmd_plugins_check(args)
    settings = load_settings()
    rows = describe_plugins(make_plugin_manager(settings.load_entrypoints,
                                                settings.blocked_plugins))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        comps = "; ".join(f"{k}: {', '.join(v)}" for k, v in row["components"].items())
        print(f"{row['name']:<14} {row['distribution']:<22} {comps}")
        print(f"{'':<14} hooks: {', '.join(row['hooks'])}")
        opts = "; ".join(f"{n}: {', '.join(keys) or '-'}" for n, keys in row["options"].items()
                         if keys is not None)
        if opts:
            print(f"{'':<14} options: {opts}")
    return 0


def cmd_plugins_check(args: argparse.Namespace) -> int:
    """Run the conformance and latency suite (rankly.engine.testing) on one component."""
    from .plugins import make_plugin_manager
    from .testing import check_component, make_workload
    from .testing.workload import TRAINERS

    if not args.name:
        print("rankly plugins check: name a component or a plugin", file=sys.stderr)
        return 2
    try:
        options = json.loads(args.options) if args.options else {}
    except ValueError as exc:
        print(f"rankly plugins check: --options is not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(options, dict):
        print("rankly plugins check: --options must be a JSON object", file=sys.stderr)
        return 2
    settings = load_settings()
    pm = make_plugin_manager(settings.load_entrypoints, settings.blocked_plugins)
    extra = tuple(t for t in (args.train or "").split(",") if t)
    try:
        workload = make_workload(pm=pm, trainers=(*TRAINERS, *extra))
    except PluginError as exc:  # an unknown trainer in --train
        print(f"rankly plugins check: --train: {exc}", file=sys.stderr)
        return 2
    try:
        reports = check_component(args.name, args.kind, workload=workload,
                                  options={**settings.plugin_options(args.name), **options},
                                  budget_ms=args.budget_ms)
    except LookupError as exc:
        print(f"rankly plugins check: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        for report in reports:
            for line in report.failures() or [report.summary()]:
                print(line)
    return 0 if all(r.passed for r in reports) else 1


#: Commands whose module is imported only when they run (see :func:`build_parser`).
COMMANDS = (
    ("train", "train models on interactions and write an artifact"),
    ("evaluate", "offline evaluation of models on a split"),
    ("recommend", "batch recommendations as JSON lines"),
    ("datasets", "download or inspect datasets"),
    ("replay", "recompute the event projections from the event log"),
    ("export-events", "write the event log as events CSV (input of rankly train)"),
    ("off-policy", "estimate a model's CTR and conversion rate on logged traffic (IPS, "
                   "SNIPS, DR)"),
    ("train-ranker", "train the learned reranker `ltr` (LightGBM lambdarank) on the "
                     "event log"),
    ("simulate", "drive a running server with simulated users (hidden tastes, "
                 "position-biased clicks)"),
)


def _command_functions(name: str) -> tuple[Callable[[argparse.ArgumentParser], None],
                                           Callable[[argparse.Namespace], int]]:
    """The functions that add the arguments of the command ``name`` of :data:`COMMANDS` and
    run it; only its module is imported."""
    if name == "train":
        from .offline import training
        return training.add_arguments, training.run
    if name == "evaluate":
        from .offline import evaluation
        return evaluation.add_arguments, evaluation.run
    if name == "recommend":
        from .offline import recommend
        return recommend.add_recommend_arguments, recommend.run_recommend
    if name == "datasets":
        from .offline import datasets
        return datasets.add_arguments, datasets.run
    if name in ("replay", "export-events"):
        from .events import cli as events_cli
        if name == "replay":
            return events_cli.add_replay_arguments, events_cli.run_replay
        return events_cli.add_export_arguments, events_cli.run_export
    if name == "off-policy":
        from .feedback import offpolicy
        return offpolicy.add_arguments, offpolicy.run
    if name == "train-ranker":
        from .feedback import ltr_training
        return ltr_training.add_arguments, ltr_training.run
    from .offline import simulator
    return simulator.add_arguments, simulator.run


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or, when ``command`` names one of :data:`COMMANDS` (the
    one about to run), with only that command's arguments: the modules of the others are not
    imported (``rankly recommend --engine ray`` reaches Ray sooner)."""
    parser = argparse.ArgumentParser(prog="rankly", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="generate a synthetic shop, train, serve on 127.0.0.1")
    p.add_argument("--port", type=port_number, default=8000,
                   help="port to serve on (default 8000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1)")
    p.add_argument("--artifacts", "--dir", dest="artifacts", default=None, metavar="DIR",
                   help="where the trained models are kept and reused from (default: "
                        "$XDG_CACHE_HOME/rankly/demo, else ~/.cache/rankly/demo)")
    p.add_argument("--retrain", action="store_true",
                   help="train again even when current trained models are there")
    p.add_argument("--seed", type=int, default=7,
                   help="seed of the synthetic shop (default 7)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="serve trained artifacts over HTTP")
    p.add_argument("--artifacts", metavar="DIR",
                   help="trained model directory (from rankly train), or RANKLY_ARTIFACTS; "
                        "with a Redis store (RANKLY_STORE_URL) it may be left out: the "
                        "server starts from the version rankly publish made active")
    p.add_argument("--config", help="TOML settings file")
    p.add_argument("--host", help="address to serve on (default 127.0.0.1, or RANKLY_HOST)")
    p.add_argument("--port", type=port_number, help="port (default 8000, or RANKLY_PORT)")
    p.add_argument("--workers", type=int,
                   help="worker processes (default: one per core with a Redis store, 1 with "
                        "the embedded store)")
    p.add_argument("--http", choices=["auto", "httptools", "h11"], default="auto",
                   help="HTTP parser (default auto: httptools when installed, else h11)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "plugins", help="list discovered plugins, their hooks and components; "
                        "`plugins check NAME` runs the conformance and latency suite",
        description="List plugins, or `rankly plugins check NAME`: check a component (or "
                    "each of a plugin's) on a small trained model: output shape and dtype, "
                    "determinism, NaN/inf, unknown ids, input mutation, thread safety, the "
                    "pipeline's fallbacks, P95 latency. Exit 0 when it passes, 1 with one "
                    "line per failed check.")
    p.add_argument("action", nargs="?", choices=["check"], help="check a component")
    p.add_argument("name", nargs="?", help="component or plugin name (with check)")
    p.add_argument("--kind", choices=["candidate_generator", "scorer", "reranker", "cache",
                                      "trainer"],
                   help="check only this kind (a name may be registered as several)")
    p.add_argument("--budget-ms", type=positive_float, default=5.0,
                   help="P95 budget per call on the standard workload (default 5)")
    p.add_argument("--options", help="the component's options as a JSON object "
                                     "(over its [plugins.NAME] settings)")
    p.add_argument("--train", metavar="TRAINERS",
                   help="comma-separated trainers to fit besides pop, itemknn and ease, for "
                        "a component that needs their part (e.g. als)")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_plugins)

    for name, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text)
        if command in (None, name):
            add, run = _command_functions(name)
            add(p)
            p.set_defaults(func=run)
    if command is None or command not in dict(COMMANDS):
        from .experiments import cli as experiments_cli
        from .storage import publish

        experiments_cli.add_arguments(sub)
        publish.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # NOTE: run as this process's own command line (not called with argv, as tests do), a
    # command may end the process itself once its output is flushed (`rankly recommend
    # --engine ray --address ...` skips leaving Ray: offline/batch_ray.end_process)
    ends_process = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    # the command is the first word that is not an option (-v, the only one before it, takes
    # no value)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    args.ends_process = ends_process
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a reader that went away is seen here
        return code
    except ConfigError as exc:
        print(f"rankly: configuration error: {exc}", file=sys.stderr)
        return 2
    except PluginError as exc:
        print(f"rankly: plugin error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        # Ctrl-C: one line, no traceback, and the shell's status for SIGINT (a command with
        # output of its own, such as `rankly recommend`, says first what it left behind)
        print(f"rankly {args.command}: interrupted", file=sys.stderr)
        return 128 + 2
    except OSError as exc:  # a file or directory named on the command line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"rankly {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        # a model directory that holds no model, or a damaged one (the model module is
        # loaded by then; `rankly --help` does not import it)
        model = sys.modules.get(f"{__package__}.model")
        if model is None or not isinstance(exc, model.ArtifactError):
            raise
        print(f"rankly {args.command}: {exc}", file=sys.stderr)
        return 2


def _closed_pipe() -> int:
    """The reader of stdout went away (``rankly plugins --json | head -1``): stop quietly,
    as other Unix tools do, with 128 + SIGPIPE and no traceback.

    Standard output is pointed at /dev/null so that the interpreter's own flush at exit
    does not raise again (the Python docs' recipe for SIGPIPE).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + 13  # SIGPIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
