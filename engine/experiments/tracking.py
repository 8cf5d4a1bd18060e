"""Per-variant exposures and outcomes, counted once per user, and bandit re-weighting.

An exposure is recorded the first time a user is served by an experiment in a phase; a click or
conversion counts once per exposed user and goes to the variant the user was exposed to. These
are the counts ``analyze`` turns into results. :class:`ExperimentTracker` keeps them in process
memory (the embedded store: one process); :class:`RedisExperimentTracker` keeps them in Redis
sets so every worker and every machine reads and writes the same counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rankly.engine.experiments.assignment import Assignment, Experiment, Experiments
from rankly.engine.experiments.bandit import Allocation, update_bandit
from rankly.engine.experiments.stats import ArmCounts

log = logging.getLogger("rankly.experiments")

OUTCOMES = ("click", "conversion")
#: Which event types count as which experiment outcome.
OUTCOME_OF_EVENT = {"click": "click", "purchase": "conversion"}


@dataclass
class _ArmSets:
    exposed: set[str] = field(default_factory=set)
    click: set[str] = field(default_factory=set)
    conversion: set[str] = field(default_factory=set)


@dataclass
class ExperimentTracker:
    """In-process counts per (experiment, phase, variant): the embedded store's tracker."""

    clock: Callable[[], float] = time.time
    _arms: dict[tuple[str, int, str], _ArmSets] = field(default_factory=dict)
    _exposed_to: dict[str, dict[str, tuple[int, str]]] = field(default_factory=dict)
    allocations: dict[str, Allocation] = field(default_factory=dict)

    def _first_exposure(self, a: Assignment, user_id: str) -> bool:
        """Note the exposure in this process; True the first time for (user, exp, phase)."""
        if a.variant is None:
            return False
        now = (a.experiment.phase, a.variant.name)
        per_user = self._exposed_to.setdefault(user_id, {})
        if per_user.get(a.experiment.key) == now:
            return False
        per_user[a.experiment.key] = now
        return True

    async def expose(self, a: Assignment, user_id: str) -> bool:
        """Count ``user_id`` as exposed to the assignment's variant; True when new."""
        if not self._first_exposure(a, user_id):
            return False
        exp = a.experiment
        arm = self._arms.setdefault((exp.key, exp.phase, a.variant.name), _ArmSets())
        if user_id in arm.exposed:
            return False
        arm.exposed.add(user_id)
        return True

    async def outcome(self, user_id: str, outcome: str,
                      experiments: Iterable[Experiment]) -> list[tuple[str, str]]:
        """Count a click or conversion of ``user_id`` in every experiment it was exposed to.

        Returns the (experiment, variant) pairs that counted it for the first time.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        counted = []
        for exp_key, (phase, variant) in self._exposed_to.get(user_id, {}).items():
            bucket = getattr(self._arms[(exp_key, phase, variant)], outcome)
            if user_id not in bucket:
                bucket.add(user_id)
                counted.append((exp_key, variant))
        return counted

    async def counts(self, exp: Experiment) -> list[ArmCounts]:
        """Per-variant counts of the experiment's current phase, in variant order."""
        out = []
        for v in exp.variants:
            sets = self._arms.get((exp.key, exp.phase, v.name), _ArmSets())
            out.append(ArmCounts(v.name, len(sets.exposed), len(sets.click), len(sets.conversion)))
        return out

    def bandits_due(self, registry: Experiments, epoch_seconds: float) -> bool:
        """True when a running bandit is behind the current decision epoch (no I/O)."""
        epoch = int(self.clock() // epoch_seconds)
        return any(e.bandit and e.epoch != epoch for e in registry.running)

    async def reweight_bandits(self, registry: Experiments, epoch_seconds: float) -> Experiments:
        """Return ``registry`` with every running bandit moved to the current decision epoch.

        Deterministic given the counts, so workers reading the same (shared) counts in the same
        epoch compute the same weights.
        """
        epoch = int(self.clock() // epoch_seconds)
        for exp in registry.running:
            if exp.bandit and exp.epoch != epoch:
                updated, alloc = update_bandit(exp, await self.counts(exp), epoch)
                self.allocations[exp.key] = alloc
                registry = registry.replace_experiment(updated)
        return registry


class RedisExperimentTracker(ExperimentTracker):
    """Counts in Redis sets shared by every worker; one hash tag per experiment (one slot).

    Keys: ``<ns>:{x:<exp>}:<phase>:assign`` (hash user -> variant, first exposure wins) and
    ``<ns>:{x:<exp>}:<phase>:<kind>:<variant>`` (sets of users; kind exposed/click/conversion).
    A process remembers whom it already reported, so a user costs one Redis call per process
    and phase, not one per request.
    """

    def __init__(self, store: Any, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock=clock)
        self.store = store

    def _key(self, exp_key: str, phase: int, part: str, variant: str | None = None) -> str:
        return self.store.keys.experiment(exp_key, phase, part, variant)

    async def expose(self, a: Assignment, user_id: str) -> bool:
        if not self._first_exposure(a, user_id):
            return False
        exp, variant = a.experiment, a.variant.name

        async def write(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            pipe.hsetnx(self._key(exp.key, exp.phase, "assign"), user_id, variant)
            pipe.sadd(self._key(exp.key, exp.phase, "exposed", variant), user_id)
            return await pipe.execute()

        _, added = await self.store.guard.run(write)
        return bool(added)

    async def outcome(self, user_id: str, outcome: str,
                      experiments: Iterable[Experiment]) -> list[tuple[str, str]]:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        exps = list(experiments)
        if not exps:
            return []

        async def assigned(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for e in exps:
                pipe.hget(self._key(e.key, e.phase, "assign"), user_id)
            return await pipe.execute()

        hits = [(e, v.decode() if isinstance(v, bytes) else v)
                for e, v in zip(exps, await self.store.guard.run(assigned), strict=True) if v]
        if not hits:
            return []

        async def count(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for e, v in hits:
                pipe.sadd(self._key(e.key, e.phase, outcome, v), user_id)
            return await pipe.execute()

        added = await self.store.guard.run(count)
        return [(e.key, v) for (e, v), new in zip(hits, added, strict=True) if new]

    async def counts(self, exp: Experiment) -> list[ArmCounts]:
        async def sizes(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for v in exp.variants:
                for kind in ("exposed", *OUTCOMES):
                    pipe.scard(self._key(exp.key, exp.phase, kind, v.name))
            return await pipe.execute()

        n = iter(int(x) for x in await self.store.guard.run(sizes))
        return [ArmCounts(v.name, next(n), next(n), next(n)) for v in exp.variants]


def make_tracker(store: Any) -> ExperimentTracker:
    """The tracker matching the store: shared counts on Redis, in-process ones otherwise."""
    return RedisExperimentTracker(store) if hasattr(store, "guard") else ExperimentTracker()
