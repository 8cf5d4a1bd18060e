"""Batch jobs on Ray: ``rankly recommend --engine ray`` and ``rankly evaluate --engine ray``.

Users are cut into blocks of :data:`BLOCK_USERS`; a pool of Ray actors, each holding the model
(memory-mapped from its artifact directory, loaded once per actor), one serving runtime and
one event loop, answers block after block. Each actor has :data:`IN_FLIGHT` blocks queued so
it never waits for the driver, the next block goes to whichever actor finishes first (no
straggler holds the end), and results are written as soon as the blocks before them are, so
the output is the local engine's, line for line. Ray is an optional extra
(``pip install 'rankly[ray]'``).

Without ``--address`` a local Ray is started for the command and stopped after it, bounded
(:data:`LOCAL_CPUS` CPUs, :data:`LOCAL_OBJECT_STORE_BYTES` of object store); with one, the
command joins that cluster, where every node needs rankly installed and the artifact
directory at the same path (a shared filesystem, or the same copy on each node).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..config import Settings
from . import progress as progress_bars

log = logging.getLogger("rankly.batch")

LOCAL_CPUS = 2  # a local Ray never takes more (the machine is usually shared)
LOCAL_OBJECT_STORE_BYTES = 200 * 1024 * 1024  # blocks of JSON lines and metric rows are small
#: Users per task: small enough that the last blocks end close together on every worker, large
#: enough that Ray's per-task cost stays a small share (a block's lines are inlined in the reply)
BLOCK_USERS = 250
#: Blocks queued on each actor: it starts the next one while the driver collects the last
IN_FLIGHT = 2


def _one_blas_thread() -> Any:
    """Pin BLAS to one thread for this actor's life: an actor is one CPU, and threads that
    find the other cores busy spin (the reason `rankly serve` pins it too)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RuntimeError("--engine ray needs Ray: pip install 'rankly[ray]'") from None
    return ray


def blocks(items: Sequence[Any], size: int = BLOCK_USERS) -> list[Sequence[Any]]:
    """``items`` cut into consecutive blocks of at most ``size`` (order kept)."""
    return [items[i:i + size] for i in range(0, len(items), size)]


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
        """The JSON lines of ``users``, exactly as :func:`evaluation.recommend` writes them."""
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

    @classmethod
    @contextlib.contextmanager
    def start(cls, address: str | None = None, *, workers: int | None = None,
              num_cpus: int = LOCAL_CPUS, object_store_bytes: int = LOCAL_OBJECT_STORE_BYTES,
              block_users: int = BLOCK_USERS) -> Iterator[RayEngine]:
        """Join Ray at ``address``, or start a bounded local Ray (stopped on exit); a Ray
        already initialized in this process is used as it is. ``workers`` defaults to the
        CPUs of the cluster (one actor per CPU)."""
        ray = _import_ray()
        started = False
        if not ray.is_initialized():
            # NOTE: log_to_driver=False: Ray would copy the workers' stdout into this
            # process's stdout, where the JSON lines go; a worker's failure still raises here.
            if address:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                ray.init(num_cpus=num_cpus, object_store_memory=object_store_bytes,
                         include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
            started = True
        try:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            yield cls(ray, max(1, workers or cpus), block_users)
        finally:
            if started:
                ray.shutdown()

    def _map(self, actor_class: type, init: tuple[Any, ...], work: list[Any],
             progress: IO[str] | None = None, unit: str = "user") -> Iterator[Any]:
        """Each of ``work``'s blocks through ``actor_class(*init).block``, results in order,
        each yielded as soon as it and every block before it are done."""
        remote = self.ray.remote(num_cpus=1)(actor_class)
        actors = [remote.remote(*init) for _ in range(min(self.workers, max(len(work), 1)))]
        try:
            total = sum(len(b) for b in work)
            with progress_bars.bar(total, "ray", progress is None, unit=unit,
                                   stream=progress) as bar:
                for block, result in zip(work, self._in_order(actors, work), strict=True):
                    bar.update(len(block))
                    yield result
            self.ray.get([actor.close.remote() for actor in actors])
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

    def recommend(self, artifacts: str | Path, users: Sequence[str], n: int, settings: Settings,
                  exclude_seen: bool | None, out: IO[str],
                  progress: IO[str] | None = None) -> int:
        """:func:`evaluation.recommend` of ``users`` over the workers: the same lines, in the
        same order, on ``out``; return the count."""
        artifacts = str(Path(artifacts).resolve())
        count = 0
        for text in self._map(Recommender, (artifacts, settings, n, exclude_seen),
                              blocks(list(users), self.block_users), progress):
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
            work = blocks(list(targets.items()), self.block_users)
            for block_rows in self._map(Evaluator, (str(scratch / "model"), settings, job),
                                        work):
                rows.extend(block_rows)
            return rows
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
