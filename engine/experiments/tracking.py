"""Per-variant exposures and outcomes, counted once per user, and bandit re-weighting.

An exposure is recorded the first time a user is served by an experiment in a phase (and, for
bandits, a decision epoch); a click or conversion counts once per exposed user and goes to the
variant the user was exposed to. These are the counts ``analyze`` turns into results.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rankly.engine.experiments.assignment import Assignment, Experiment, Experiments
from rankly.engine.experiments.bandit import Allocation, update_bandit
from rankly.engine.experiments.stats import ArmCounts

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
    """In-process counts per (experiment, phase, variant); one tracker per serving process."""

    clock: Callable[[], float] = time.time
    _arms: dict[tuple[str, int, str], _ArmSets] = field(default_factory=dict)
    _exposed_to: dict[str, dict[str, tuple[int, str]]] = field(default_factory=dict)
    allocations: dict[str, Allocation] = field(default_factory=dict)

    def record_exposure(self, a: Assignment, user_id: str) -> bool:
        """Count ``user_id`` as exposed to the assignment's variant; True when new."""
        if a.variant is None:
            return False
        exp = a.experiment
        now = (exp.phase, a.variant.name)
        per_user = self._exposed_to.setdefault(user_id, {})
        if per_user.get(exp.key) == now:
            return False
        per_user[exp.key] = now
        arm = self._arms.setdefault((exp.key, exp.phase, a.variant.name), _ArmSets())
        if user_id in arm.exposed:
            return False
        arm.exposed.add(user_id)
        return True

    def record_outcome(self, user_id: str, outcome: str) -> list[tuple[str, str]]:
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

    def counts(self, exp: Experiment) -> list[ArmCounts]:
        """Per-variant counts of the experiment's current phase, in variant order."""
        out = []
        for v in exp.variants:
            sets = self._arms.get((exp.key, exp.phase, v.name), _ArmSets())
            out.append(ArmCounts(v.name, len(sets.exposed), len(sets.click), len(sets.conversion)))
        return out

    def reweight_bandits(self, registry: Experiments, epoch_seconds: float) -> Experiments:
        """Return ``registry`` with every running bandit moved to the current decision epoch."""
        epoch = int(self.clock() // epoch_seconds)
        for exp in registry.running:
            if exp.bandit and exp.epoch != epoch:
                updated, alloc = update_bandit(exp, self.counts(exp), epoch)
                self.allocations[exp.key] = alloc
                registry = registry.replace_experiment(updated)
        return registry
