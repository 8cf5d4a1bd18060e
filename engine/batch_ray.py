"""Batch jobs on Ray: ``rankly recommend --engine ray`` and ``rankly evaluate --engine ray``.

Users are cut into blocks of :data:`BLOCK_USERS`; a pool of Ray actors, each holding the model
(memory-mapped from its artifact directory, loaded once per actor) and one serving runtime,
answers block after block; blocks come back in submission order, so the output is the local
engine's, line for line. Ray is an optional extra (``pip install 'rankly[ray]'``).

Without ``--address`` a local Ray is started for the command and stopped after it, bounded
(:data:`LOCAL_CPUS` CPUs, :data:`LOCAL_OBJECT_STORE_BYTES` of object store); with one, the
command joins that cluster, where every node needs rankly installed and the artifact
directory at the same path (a shared filesystem, or the same copy on each node).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from rankly.engine import progress as progress_bars
from rankly.engine.config import Settings

log = logging.getLogger("rankly.batch")

LOCAL_CPUS = 2  # a local Ray never takes more (the machine is usually shared)
LOCAL_OBJECT_STORE_BYTES = 200 * 1024 * 1024  # blocks of JSON lines and metric rows are small
BLOCK_USERS = 1000  # users per task: ~1 s of work, amortizes the ~1 ms per-task overhead


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
    """One Ray worker of ``rankly recommend``: the model and a runtime, built once."""

    def __init__(self, artifacts: str, settings: Settings, n: int,
                 exclude_seen: bool | None) -> None:
        from rankly.engine.model import load_model
        from rankly.engine.plugins import make_plugin_manager

        self._blas = _one_blas_thread()
        self.model = load_model(artifacts)
        self.settings = settings
        self.n = n
        self.exclude_seen = exclude_seen
        self.pm = make_plugin_manager(settings.load_entrypoints, settings.blocked_plugins)

    def block(self, users: Sequence[str]) -> str:
        """The JSON lines of ``users``, exactly as :func:`evaluation.recommend` writes them."""
        from rankly.engine.evaluation import recommend

        out = io.StringIO()
        recommend(self.model, list(users), self.n, self.settings, self.exclude_seen,
                  pm=self.pm, out=out)
        return out.getvalue()


class Evaluator:
    """One Ray worker of ``rankly evaluate``: one trained setup, its runtime built once."""

    def __init__(self, model_dir: str, settings: Settings, job: Any) -> None:
        from rankly.engine.evaluation import serving_runtime
        from rankly.engine.model import load_model
        from rankly.engine.plugins import make_plugin_manager

        self._blas = _one_blas_thread()
        pm = make_plugin_manager(settings.load_entrypoints, settings.blocked_plugins)
        self.rt = serving_runtime(load_model(model_dir), settings, pm)
        self.job = job

    def block(self, targets: Sequence[tuple[str, np.ndarray]]
              ) -> list[tuple[str, dict[str, float], np.ndarray]]:
        from rankly.engine.evaluation import user_metrics

        return user_metrics(self.rt, self.job, dict(targets))


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
        """Each of ``work``'s blocks through ``actor_class(*init).block``, results in order."""
        from ray.util import ActorPool

        remote = self.ray.remote(num_cpus=1)(actor_class)
        actors = [remote.remote(*init) for _ in range(min(self.workers, max(len(work), 1)))]
        try:
            pool = ActorPool(actors)
            total = sum(len(b) for b in work)
            with progress_bars.bar(total, "ray", progress is None, unit=unit,
                                   stream=progress) as bar:
                for block, result in zip(work, pool.map(lambda a, b: a.block.remote(b), work),
                                         strict=True):
                    bar.update(len(block))
                    yield result
        finally:
            for actor in actors:
                self.ray.kill(actor)

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
        """:func:`evaluation.user_metrics` of ``targets`` for the model of ``parts`` trained
        on ``data``, over the workers (the model is written once to a scratch directory that
        every worker maps; on a multi-node cluster TMPDIR must be a shared filesystem)."""
        from rankly.engine.model import save_model

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
