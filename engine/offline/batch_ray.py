"""Batch jobs on Ray: ``rankly recommend --engine ray`` and ``rankly evaluate --engine ray``.

Users are cut into blocks (:func:`blocks`: at most :data:`BLOCK_USERS`, smaller towards the end
so the workers finish together); a pool of Ray actors, each holding the model (memory-mapped
from its artifact directory, loaded once per actor), one serving runtime and one event loop,
answers block after block. Each actor has :data:`IN_FLIGHT` blocks queued so it never waits
for the driver, the next block goes to whichever actor finishes first, and results are
written as soon as the blocks before them are, so the output is the local engine's, line for
line. The actors are asked for before the driver maps the model and reads the user list (the
driver of ``rankly recommend`` imports neither NumPy nor the model before): a Ray worker's
start (a Python process importing Ray, then rankly and its plugins) overlaps the driver's own
work. Ray is an optional extra (``pip install 'rankly[ray]'``).

Without ``--address`` a local Ray is started for the command and stopped after it, bounded
(:data:`LOCAL_CPUS` CPUs, :data:`LOCAL_OBJECT_STORE_BYTES` of object store) and reachable from
this machine only (its processes listen on 127.0.0.1); with one, the command joins that
cluster, where every node needs rankly installed and the artifact directory at the same path
(a shared filesystem, or the same copy on each node). A command that joined a cluster and is
done ends its process with :func:`end_process` instead of leaving Ray first: the cluster sees
its driver go, as it sees any driver end.

Each engine logs one line saying where its time went (``ray: workers=2 connect_s=...``):
joining or starting Ray, the first block back (the workers' start), all blocks, stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from ..config import Settings
from . import progress as progress_bars

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("rankly.batch")

LOCAL_CPUS = 2  # a local Ray never takes more (the machine is usually shared)
LOCAL_OBJECT_STORE_BYTES = 200 * 1024 * 1024  # blocks of JSON lines and metric rows are small
#: Users per task: large enough that Ray's per-task cost stays a small share (a block's lines
#: are inlined in the reply); the last blocks are smaller (:func:`blocks`)
BLOCK_USERS = 250
#: The smallest block :func:`blocks` cuts towards the end
MIN_BLOCK_USERS = 25
#: Blocks queued on each actor: it starts the next one while the driver collects the last
IN_FLIGHT = 2


def _one_blas_thread() -> Any:
    """Pin BLAS to one thread for this actor's life: an actor is one CPU, and threads that
    find the other cores busy spin (the reason `rankly serve` pins it too)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def _import_ray(address: str | None = None) -> Any:
    """``ray``, imported so that a local Ray (no ``address``) listens on 127.0.0.1 only and
    a Ray at a loopback ``address`` (such a local Ray) can be joined."""
    if (not address or address.rpartition(":")[0] in LOOPBACK) and "ray" not in sys.modules:
        # NOTE: Ray reads this when it is imported. With "clusters" off (its default on macOS
        # and Windows) it takes 127.0.0.1 as the node's address: the GCS, the raylet, the
        # agents and the workers listen there instead of on every interface, and a driver
        # joining 127.0.0.1 stays there (with clusters on, it swaps in the machine's address).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if not address and "ray" not in sys.modules:
        # Token authentication, which Ray turns on for a new local Ray anyway; said before
        # the import (Ray reads it then), it prints no warning on stderr. Joining, set it
        # yourself when the cluster uses tokens.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray
    except ImportError:
        raise RuntimeError("--engine ray needs Ray: pip install 'rankly[ray]'") from None
    return ray


def blocks(items: Sequence[Any], size: int = BLOCK_USERS, workers: int = 1
           ) -> list[Sequence[Any]]:
    """``items`` cut into consecutive blocks (order kept) of at most ``size``. A block takes at
    most a quarter of a worker's share of what is left, down to :data:`MIN_BLOCK_USERS`, so the
    blocks shrink towards the end and ``workers`` workers finish within a small block of each
    other."""
    out = []
    start, floor = 0, min(size, MIN_BLOCK_USERS)
    while start < len(items):
        take = max(floor, min(size, math.ceil((len(items) - start) / (4 * max(workers, 1)))))
        out.append(items[start:start + take])
        start += take
    return out


class Recommender:
    """One Ray worker of ``rankly recommend``: the model, one runtime and one event loop,
    built once and used for every block."""

    def __init__(self, artifacts: str, settings: Settings, n: int,
                 exclude_seen: bool | None) -> None:
        from ..model import load_model
        from ..plugins import make_plugin_manager
        from .batch import batch_runtime

        self._blas = _one_blas_thread()
        model = load_model(artifacts)
        pm = make_plugin_manager(settings.load_entrypoints, settings.blocked_plugins)
        self.n = n
        self.loop = asyncio.new_event_loop()

        async def build() -> Any:  # in the loop: a Redis store binds to it
            return batch_runtime(model, settings, exclude_seen, pm)

        self.rt = self.loop.run_until_complete(build())

    def block(self, users: Sequence[str]) -> str:
        """The JSON lines of ``users``, exactly as :func:`batch.recommend` writes them."""
        from .batch import write_recommendations

        out = io.StringIO()
        self.loop.run_until_complete(write_recommendations(self.rt, list(users), self.n, out))
        return out.getvalue()

    def close(self) -> None:
        self.loop.run_until_complete(self.rt.store.close())
        self.loop.close()


class Evaluator:
    """One Ray worker of ``rankly evaluate``: one trained setup, its runtime built once."""

    def __init__(self, model_dir: str, settings: Settings, job: Any) -> None:
        from ..model import load_model
        from ..plugins import make_plugin_manager
        from .batch import serving_runtime

        self._blas = _one_blas_thread()
        pm = make_plugin_manager(settings.load_entrypoints, settings.blocked_plugins)
        self.rt = serving_runtime(load_model(model_dir), settings, pm)
        self.job = job

    def block(self, targets: Sequence[tuple[str, np.ndarray]]
              ) -> list[tuple[str, dict[str, float], np.ndarray]]:
        from .batch import user_metrics

        return user_metrics(self.rt, self.job, dict(targets))

    def close(self) -> None:
        """Nothing to release: the evaluation runtime's store is in memory."""


class RayEngine:
    """Runs batch work on Ray actors; build it with :meth:`start`."""

    def __init__(self, ray: Any, workers: int, block_users: int = BLOCK_USERS) -> None:
        self.ray = ray
        self.workers = workers
        self.block_users = block_users
        #: Seconds spent, logged when the engine stops: connect_s (joining or starting Ray),
        #: first_block_s (asking for the workers until the first block is back: their start),
        #: ranked_s (asking for the workers until every block is back, summed over jobs),
        #: stop_s (disconnecting, or stopping the local Ray; absent when the engine stays
        #: joined)
        self.timings: dict[str, float] = {}
        #: Still joined to a cluster after :meth:`start` (``stay_joined``): the process must
        #: end with :func:`end_process`
        self.joined = False

    @classmethod
    @contextlib.contextmanager
    def start(cls, address: str | None = None, *, workers: int | None = None,
              num_cpus: int = LOCAL_CPUS, object_store_bytes: int = LOCAL_OBJECT_STORE_BYTES,
              block_users: int = BLOCK_USERS, stay_joined: bool = False
              ) -> Iterator[RayEngine]:
        """Join Ray at ``address``, or start a bounded local Ray (stopped on exit); a Ray
        already initialized in this process is used as it is. ``workers`` defaults to the
        CPUs of the cluster (one actor per CPU).

        With ``stay_joined`` (for a process that ends with the command), a Ray joined at
        ``address`` is not left when the block ends without an error: the caller ends the
        process with :func:`end_process` (``engine.joined`` says whether it must)."""
        ray = _import_ray(address)
        started = time.perf_counter()
        init = not ray.is_initialized()
        if init:
            # NOTE: log_to_driver=False: Ray would copy the workers' stdout into this
            # process's stdout, where the JSON lines go; a worker's failure still raises here.
            if address:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                ray.init(num_cpus=num_cpus, object_store_memory=object_store_bytes,
                         include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
                _warn_unless_local_only(ray)
                _stop_autoscaler(ray)
        engine = cls(ray, 1, block_users)
        engine.timings["connect_s"] = time.perf_counter() - started
        leave = init
        try:
            engine.workers = max(1, workers or int(ray.cluster_resources().get("CPU", 1)))
            yield engine
            if init and address and stay_joined:
                leave, engine.joined = False, True
        finally:
            if leave:
                stopping = time.perf_counter()
                ray.shutdown()
                engine.timings["stop_s"] = time.perf_counter() - stopping
            log.info("ray: workers=%d %s", engine.workers,
                     " ".join(f"{k}={v:.2f}" for k, v in engine.timings.items()))

    def _map(self, actor_class: type, init: tuple[Any, ...],
             items: Sequence[Any] | Callable[[], Sequence[Any]],
             progress: IO[str] | None = None, unit: str = "user") -> Iterator[Any]:
        """Each block of ``items`` (:func:`blocks`) through ``actor_class(*init).block``,
        results in order, each yielded as soon as it and every block before it are done.
        ``items`` may be a function returning them: it is called once the workers have been
        asked for, so that they start while it runs."""
        asked = time.perf_counter()
        remote = self.ray.remote(num_cpus=1)(actor_class)
        count = self.workers if callable(items) else min(self.workers, max(len(items), 1))
        actors = [remote.remote(*init) for _ in range(count)]
        try:
            work = blocks(list(items() if callable(items) else items), self.block_users,
                          len(actors))
            first = None
            with progress_bars.bar(sum(len(b) for b in work), "ray", progress is None,
                                   unit=unit, stream=progress) as bar:
                for block, result in zip(work, self._in_order(actors, work), strict=True):
                    if first is None:
                        first = time.perf_counter() - asked
                    bar.update(len(block))
                    yield result
            self.ray.get([actor.close.remote() for actor in actors])
            self.timings.setdefault("first_block_s", first or 0.0)
            self.timings["ranked_s"] = (self.timings.get("ranked_s", 0.0)
                                        + time.perf_counter() - asked)
        finally:
            for actor in actors:
                self.ray.kill(actor)

    def _in_order(self, actors: list[Any], work: list[Any]) -> Iterator[Any]:
        """``actor.block(b)`` for every block ``b`` of ``work``, in order. Each actor holds
        :data:`IN_FLIGHT` blocks; whichever finishes one gets the next block."""
        ray = self.ray
        queue = iter(enumerate(work))
        pending: dict[Any, tuple[int, Any]] = {}  # result ref -> (block index, actor)
        done: dict[int, Any] = {}
        nxt = 0

        def submit(actor: Any) -> None:
            item = next(queue, None)
            if item is not None:
                pending[actor.block.remote(item[1])] = (item[0], actor)

        for _ in range(IN_FLIGHT):
            for actor in actors:
                submit(actor)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                index, actor = pending.pop(ref)
                done[index] = ray.get(ref)
                submit(actor)
            while nxt in done:
                yield done.pop(nxt)
                nxt += 1

    def recommend(self, artifacts: str | Path,
                  users: Sequence[str] | Callable[[], Sequence[str]], n: int,
                  settings: Settings, exclude_seen: bool | None, out: IO[str],
                  progress: IO[str] | None = None) -> int:
        """:func:`batch.recommend` of ``users`` over the workers: the same lines, in the same
        order, on ``out``; return the count. ``users`` may be a function returning them,
        called while the workers start (reading a long list costs no time of its own)."""
        artifacts = str(Path(artifacts).resolve())
        count = 0
        for text in self._map(Recommender, (artifacts, settings, n, exclude_seen), users,
                              progress):
            out.write(text)
            count += text.count("\n")
        return count

    def user_metrics(self, data: Any, parts: Sequence[Any], settings: Settings, job: Any,
                     targets: Mapping[str, np.ndarray]
                     ) -> list[tuple[str, dict[str, float], np.ndarray]]:
        """:func:`batch.user_metrics` of ``targets`` for the model of ``parts`` trained
        on ``data``, over the workers (the model is written once to a scratch directory that
        every worker maps; on a multi-node cluster TMPDIR must be a shared filesystem)."""
        from ..model import save_model

        scratch = Path(tempfile.mkdtemp(prefix="rankly-eval-"))
        try:
            save_model(scratch / "model", data.catalog, data.users, parts,
                       data_fingerprint="evaluate")
            rows: list[tuple[str, dict[str, float], np.ndarray]] = []
            for block_rows in self._map(Evaluator, (str(scratch / "model"), settings, job),
                                        list(targets.items())):
                rows.extend(block_rows)
            return rows
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def end_process(code: int) -> NoReturn:
    """End this process now with exit status ``code``, after flushing stdout, stderr and
    the log handlers; a flush that fails (a reader gone) raises as usual instead.

    The way out of a command that joined a running Ray and is done (``RayEngine.start(...,
    stay_joined=True)``): ``ray.shutdown()`` waits for a polling thread of Ray's gRPC client
    to end, Ray's own exit hook sleeps so that log lines can arrive, and the interpreter's
    teardown with Ray loaded costs more again, all seconds after the last line is written.
    The cluster sees the driver go as it sees any driver end: it ends the job and its actors
    (already killed). Nothing else must be left to ``atexit``."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _stop_autoscaler(ray: Any) -> None:
    """End the autoscaler monitor of the local Ray this command just started.

    A local Ray of fixed size has nothing to scale, and at ``ray.shutdown()`` the monitor
    ignores SIGTERM until Ray's one-second grace runs out (it reports its end to the GCS,
    stopped just before it), a second of every command's time. SIGKILL, not SIGTERM: a
    monitor that sees SIGTERM reports "the autoscaler failed", which Ray prints on the
    driver's stdout, where the JSON lines go. Ray's process table is not a public API: when
    it is not where this looks, the monitor is left to ``ray.shutdown()`` as before."""
    try:
        from ray._private import ray_constants

        node = ray._private.worker._global_node
        monitors = list(node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, ()))
        for info in monitors:
            info.process.kill()
            info.process.wait(timeout=5)
    except Exception:  # another Ray version: keep its own shutdown
        log.debug("could not stop the local Ray's autoscaler monitor", exc_info=True)


def _warn_unless_local_only(ray: Any) -> None:
    """Log a warning when the local Ray just started listens beyond 127.0.0.1."""
    host = str(ray.get_runtime_context().gcs_address).rpartition(":")[0]
    if host not in LOOPBACK:
        log.warning("the local Ray listens on %s, not on 127.0.0.1 only: "
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 must be set before Ray is imported",
                    host)
