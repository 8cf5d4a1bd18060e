"""Per-variant exposures and outcomes, per user and per impression, and bandit re-weighting.

An exposure is recorded the first time a user is served by an experiment in a phase; a click or
conversion counts once per exposed user and goes to the variant the user was exposed to. These
are the counts ``analyze`` turns into results. Per impression, every served item counts, and a
click or conversion that carries a ``request_id`` counts once per (request, item): the sums of
per-user counts, squares and products (``stats.bump_moments``) give the per-impression rates
and their user-clustered variance. :class:`ExperimentTracker` keeps them in process memory (the
embedded store: one process); :class:`RedisExperimentTracker` keeps them in Redis so every
worker and every machine reads and writes the same counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..storage.store import StoreUnavailable
from .assignment import Assignment, Experiment, Experiments, Status
from .bandit import Allocation, update_bandit
from .stats import ArmCounts, ImpressionCounts, bump_moments

#: The per-user count each per-impression outcome adds to (stats.KINDS).
KIND_OF_OUTCOME = {"click": "x", "conversion": "c"}
IMPRESSION_FLUSH_S = 0.2  # how long served impressions wait to be written to Redis, at most

# NOTE: the arithmetic of stats.bump_moments, atomically next to the per-user counts.
BUMP_MOMENTS = """
if ARGV[4] ~= '' and redis.call('SADD', KEYS[3], ARGV[4]) == 0 then return 0 end
local user, kind, k = ARGV[1], ARGV[2], tonumber(ARGV[3])
local kinds = {'n', 'x', 'c'}
local cur, fresh = {}, true
for _, f in ipairs(kinds) do
  cur[f] = tonumber(redis.call('HGET', KEYS[1], f .. ':' .. user) or '0')
  if cur[f] ~= 0 then fresh = false end
end
if fresh then redis.call('HINCRBY', KEYS[2], 'users', 1) end
for _, f in ipairs(kinds) do
  local pair = (f < kind) and (f .. kind) or (kind .. f)
  local add = cur[f] * k
  if f == kind then add = 2 * cur[f] * k + k * k end
  redis.call('HINCRBY', KEYS[2], pair, add)
end
redis.call('HINCRBY', KEYS[2], kind, k)
redis.call('HINCRBY', KEYS[1], kind .. ':' .. user, k)
return 1
"""

# NOTE: one script for "give these keys the TTL unless they have one": a write to a stopped
# experiment (a late outcome) must not reset its countdown, nor leave a key it creates forever.
EXPIRE_IF_NONE = """
for _, k in ipairs(KEYS) do
  if redis.call('TTL', k) == -1 then redis.call('EXPIRE', k, ARGV[1]) end
end
return 0
"""
#: The key parts of an experiment phase: one for the phase, the others per variant.
PHASE_PARTS = ("assign",)
VARIANT_PARTS = ("exposed", "click", "conversion", "imp", "impm", "impseen")
#: A running experiment's keys get their TTL back on a write at most this often per key and
#: process (at most half the retention): an EXPIRE per write would double the commands.
REFRESH_S = 3600.0

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
class _ArmImpressions:
    users: dict[str, dict[str, int]] = field(default_factory=dict)  # user -> kind -> count
    moments: dict[str, int] = field(default_factory=dict)
    counted: set[tuple[str, str, str]] = field(default_factory=set)  # (outcome, request, item)


@dataclass(frozen=True, slots=True)
class Credited:
    """The (experiment, phase, variant) arms an outcome counted in for the first time: per
    user (once per exposed user) and per impression (once per request and item)."""

    per_user: list[tuple[str, int, str]]
    per_impression: list[tuple[str, int, str]]


@dataclass
class ExperimentTracker:
    """In-process counts per (experiment, phase, variant): the embedded store's tracker."""

    clock: Callable[[], float] = time.time
    _arms: dict[tuple[str, int, str], _ArmSets] = field(default_factory=dict)
    _exposed_to: dict[str, dict[str, tuple[int, str]]] = field(default_factory=dict)
    _impressions: dict[tuple[str, int, str], _ArmImpressions] = field(default_factory=dict)
    allocations: dict[str, Allocation] = field(default_factory=dict)

    def note_impressions(self, a: Assignment, user_id: str, served: int) -> None:
        """Count ``served`` items shown to ``user_id`` by the assignment's variant (no I/O:
        it runs on the request path)."""
        if a.variant is None or served <= 0:
            return
        self._bump((a.experiment.key, a.experiment.phase, a.variant.name), user_id, "n",
                   served)

    def _bump(self, arm: tuple[str, int, str], user_id: str, kind: str, k: int) -> None:
        imp = self._impressions.setdefault(arm, _ArmImpressions())
        bump_moments(imp.moments, imp.users.setdefault(user_id, {}), kind, k)

    async def flush_impressions(self) -> None:
        """Write impressions noted but not yet stored (nothing to do in process)."""

    async def retain(self, exp: Experiment) -> int:
        """Start the retention countdown of every stored count of ``exp`` (all its phases so
        far): when it stops, or when a new phase leaves the old ones. Returns how many stored
        structures got it (in process: none, counts live as long as the process)."""
        return 0

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

    async def outcome(self, user_id: str, outcome: str, experiments: Iterable[Experiment],
                      served: tuple[str, str] | None = None) -> Credited:
        """Count a click or conversion of ``user_id`` in every experiment it was exposed to.

        ``served``: the event's (request_id, item_id) when it carries a request_id; it then
        counts per impression too, once per (request, item) and outcome.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        credited = Credited([], [])
        for exp_key, (phase, variant) in self._exposed_to.get(user_id, {}).items():
            bucket = getattr(self._arms[(exp_key, phase, variant)], outcome)
            if user_id not in bucket:
                bucket.add(user_id)
                credited.per_user.append((exp_key, phase, variant))
            if served is not None:
                imp = self._impressions.setdefault((exp_key, phase, variant), _ArmImpressions())
                if (outcome, *served) not in imp.counted:
                    imp.counted.add((outcome, *served))
                    self._bump((exp_key, phase, variant), user_id, KIND_OF_OUTCOME[outcome], 1)
                    credited.per_impression.append((exp_key, phase, variant))
        return credited

    async def counts(self, exp: Experiment) -> list[ArmCounts]:
        """Per-variant counts of the experiment's current phase, in variant order."""
        out = []
        for v in exp.variants:
            sets = self._arms.get((exp.key, exp.phase, v.name), _ArmSets())
            out.append(ArmCounts(v.name, len(sets.exposed), len(sets.click), len(sets.conversion)))
        return out

    async def impression_counts(self, exp: Experiment) -> list[ImpressionCounts]:
        """Per-variant per-impression sums of the experiment's current phase, in variant
        order (this process's noted impressions written first)."""
        await self.flush_impressions()
        return [ImpressionCounts(v.name, dict(self._impressions.get(
            (exp.key, exp.phase, v.name), _ArmImpressions()).moments)) for v in exp.variants]

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
    and phase, not one per request. Per impression, ``...:imp:<variant>`` (hash
    ``<kind>:<user>`` -> count), ``...:impm:<variant>`` (hash of the running sums) and
    ``...:impseen:<variant>`` (set of counted outcome, request and item); served impressions
    are summed in process and written in one pipeline at most every ``IMPRESSION_FLUSH_S``.

    Retention (``experiment_retention_days``, ``retention_s`` here; 0 keeps keys forever):
    every key a write touches carries a TTL. A running experiment's writes set it back to the
    retention (at most every :data:`REFRESH_S` per key and process, in the same pipeline), so
    its counts expire only after that long without a write; :meth:`retain` restarts it for
    every key when the experiment stops or moves to a new phase; a write to a stopped
    experiment only gives a TTL to a key that has none.
    """

    def __init__(self, store: Any, clock: Callable[[], float] = time.time,
                 retention_s: float = 0.0) -> None:
        super().__init__(clock=clock)
        self.store = store
        self.retention_s = retention_s
        self._refreshed: dict[str, float] = {}  # key -> when this process last set its TTL
        self._pending: dict[tuple[str, int, str, str], int] = {}
        self._flush_due: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()

    def note_impressions(self, a: Assignment, user_id: str, served: int) -> None:
        if a.variant is None or served <= 0:
            return
        key = (a.experiment.key, a.experiment.phase, a.variant.name, user_id)
        self._pending[key] = self._pending.get(key, 0) + served
        if self._flush_due is None:
            self._flush_due = asyncio.get_running_loop().call_later(IMPRESSION_FLUSH_S,
                                                                    self._flush_later)

    def _flush_later(self) -> None:
        task = asyncio.get_running_loop().create_task(self.flush_impressions())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    def _bump_call(self, pipe: Any, arm: tuple[str, int, str], user_id: str, kind: str,
                   k: int, once: str = "") -> None:
        exp_key, phase, variant = arm
        pipe.eval(BUMP_MOMENTS, 3, self._key(exp_key, phase, "imp", variant),
                  self._key(exp_key, phase, "impm", variant),
                  self._key(exp_key, phase, "impseen", variant), user_id, kind, k, once)

    async def flush_impressions(self) -> None:
        """Write the impressions noted since the last flush (one pipeline). When Redis is
        unavailable they are dropped, with a warning, as exposures are."""
        if self._flush_due is not None:
            self._flush_due.cancel()
            self._flush_due = None
        pending, self._pending = self._pending, {}
        if not pending:
            return

        async def write(r: Any) -> list[Any]:
            # NOTE: EVAL, not EVALSHA: a cluster pipeline cannot reload a script a node has
            # not seen (as in RedisStore.record_interactions)
            pipe = r.pipeline(transaction=False)
            for (exp_key, phase, variant, user_id), k in pending.items():
                self._bump_call(pipe, (exp_key, phase, variant), user_id, "n", k)
            for exp_key, phase, variant in {key[:3] for key in pending}:
                self._keep(pipe, [self._key(exp_key, phase, part, variant)
                                  for part in ("imp", "impm", "impseen")], running=True)
            return await pipe.execute()

        try:
            await self.store.background.run(write, deadline_s=5.0)
        except StoreUnavailable:
            log.warning("experiment impressions not recorded: store unavailable (%d users)",
                        len(pending))
        except Exception:  # a background flush must not die with an unretrieved exception
            log.warning("experiment impressions not recorded (%d users)", len(pending),
                        exc_info=True)

    def _key(self, exp_key: str, phase: int, part: str, variant: str | None = None) -> str:
        return self.store.keys.experiment(exp_key, phase, part, variant)

    def _ttl(self) -> int | None:
        """The retention in whole seconds (at least 1), or None to keep keys forever."""
        return max(1, math.ceil(self.retention_s)) if self.retention_s > 0 else None

    def _keep(self, pipe: Any, keys: Sequence[str], running: bool) -> None:
        """Queue on ``pipe``, after its writes to ``keys`` (one experiment's), what keeps
        them from living forever (see the class docstring)."""
        ttl = self._ttl()
        if ttl is None or not keys:
            return
        if not running:
            pipe.eval(EXPIRE_IF_NONE, len(keys), *keys, ttl)
            return
        now = self.clock()
        every = min(REFRESH_S, ttl / 2)
        for key in keys:
            if now - self._refreshed.get(key, -math.inf) >= every:
                pipe.expire(key, ttl)
                self._refreshed[key] = now

    def _keys_of(self, exp: Experiment) -> list[str]:
        return [self._key(exp.key, phase, part, variant)
                for phase in range(exp.phase + 1)
                for part, variant in ([(p, None) for p in PHASE_PARTS]
                                      + [(p, v.name) for v in exp.variants
                                         for p in VARIANT_PARTS])]

    async def retain(self, exp: Experiment) -> int:
        ttl = self._ttl()
        if ttl is None:
            return 0
        keys = self._keys_of(exp)

        async def write(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for key in keys:
                pipe.expire(key, ttl)
            return await pipe.execute()

        done = await self.store.guard.run(write)
        for key in keys:  # a restarted experiment's next write refreshes them again
            self._refreshed.pop(key, None)
        return sum(bool(d) for d in done)

    async def expose(self, a: Assignment, user_id: str) -> bool:
        if not self._first_exposure(a, user_id):
            return False
        exp, variant = a.experiment, a.variant.name

        async def write(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            assign = self._key(exp.key, exp.phase, "assign")
            exposed = self._key(exp.key, exp.phase, "exposed", variant)
            # the variant the user saw last: fixed within a phase for fixed weights; a
            # bandit draws again each epoch, and its outcomes go to the latest draw, as the
            # embedded store's tracker credits them
            pipe.hset(assign, user_id, variant)
            pipe.sadd(exposed, user_id)
            self._keep(pipe, [assign, exposed], running=exp.status is Status.RUNNING)
            return await pipe.execute()

        added = (await self.store.guard.run(write))[1]
        return bool(added)

    async def outcome(self, user_id: str, outcome: str, experiments: Iterable[Experiment],
                      served: tuple[str, str] | None = None) -> Credited:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        exps = list(experiments)
        if not exps:
            return Credited([], [])

        async def assigned(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for e in exps:
                pipe.hget(self._key(e.key, e.phase, "assign"), user_id)
            return await pipe.execute()

        hits = [(e, v.decode() if isinstance(v, bytes) else v)
                for e, v in zip(exps, await self.store.guard.run(assigned), strict=True) if v]
        if not hits:
            return Credited([], [])
        once = "" if served is None else json.dumps([outcome, *served])

        async def count(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for e, v in hits:
                pipe.sadd(self._key(e.key, e.phase, outcome, v), user_id)
                if served is not None:
                    self._bump_call(pipe, (e.key, e.phase, v), user_id,
                                    KIND_OF_OUTCOME[outcome], 1, once)
            for e, v in hits:  # after the counts: their replies are read in order below
                parts = (outcome, "imp", "impm", "impseen") if served is not None else (outcome,)
                self._keep(pipe, [self._key(e.key, e.phase, part, v) for part in parts],
                           running=e.status is Status.RUNNING)
            return await pipe.execute()

        added = iter(await self.store.guard.run(count))
        credited = Credited([], [])
        for e, v in hits:
            if next(added):
                credited.per_user.append((e.key, e.phase, v))
            if served is not None and next(added):
                credited.per_impression.append((e.key, e.phase, v))
        return credited

    async def counts(self, exp: Experiment) -> list[ArmCounts]:
        async def sizes(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for v in exp.variants:
                for kind in ("exposed", *OUTCOMES):
                    pipe.scard(self._key(exp.key, exp.phase, kind, v.name))
            return await pipe.execute()

        n = iter(int(x) for x in await self.store.guard.run(sizes))
        return [ArmCounts(v.name, next(n), next(n), next(n)) for v in exp.variants]

    async def impression_counts(self, exp: Experiment) -> list[ImpressionCounts]:
        await self.flush_impressions()

        async def sums(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for v in exp.variants:
                pipe.hgetall(self._key(exp.key, exp.phase, "impm", v.name))
            return await pipe.execute()

        rows = await self.store.guard.run(sums)
        return [ImpressionCounts(v.name, {_text(k): int(x) for k, x in row.items()})
                for v, row in zip(exp.variants, rows, strict=True)]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def make_tracker(store: Any, retention_s: float = 0.0) -> ExperimentTracker:
    """The tracker matching the store: shared counts on Redis (kept ``retention_s`` seconds,
    see :class:`RedisExperimentTracker`; 0: forever), in-process ones otherwise."""
    if hasattr(store, "guard"):
        return RedisExperimentTracker(store, retention_s=retention_s)
    return ExperimentTracker()
