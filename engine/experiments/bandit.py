"""Thompson-sampling bandit allocation: reproducible weights and hash-derived per-user draws.

Thompson sampling sends each user to arm k with probability P(arm k is best | data). We compute
that probability exactly (numerical integration of the Beta posteriors, see stats.prob_best)
once per decision epoch, floor it at ``min_share``, and then assign users by a GrowthBook hash of
``(seed, user, epoch)`` into the resulting bucket ranges. That is the same allocation as
drawing from the posteriors per request, but reproducible on every machine and free of any
random number generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .assignment import (
    Experiment,
    bucket_ranges,
    choose_variation,
    gb_hash,
)
from .stats import BANDIT_NOTE, ArmCounts, prob_best

DEFAULT_MIN_SHARE = 0.01
DEFAULT_WARMUP = 100


@dataclass(frozen=True, slots=True)
class Allocation:
    """Bandit allocation for one epoch. ``warming_up``: some arm has fewer than ``warmup``
    exposures, so ``weights`` are the configured (initial) weights, not Thompson weights."""

    weights: tuple[float, ...]
    p_best: tuple[float, ...]
    warming_up: bool

    def as_dict(self, names: Sequence[str]) -> dict[str, object]:
        return {
            "weights": dict(zip(names, self.weights, strict=True)),
            "p_best": dict(zip(names, self.p_best, strict=True)),
            "warming_up": self.warming_up,
            "note": BANDIT_NOTE,
        }


def thompson_weights(
    successes: Sequence[int],
    trials: Sequence[int],
    *,
    min_share: float = DEFAULT_MIN_SHARE,
    warmup: int = DEFAULT_WARMUP,
    initial: Sequence[float] | None = None,
) -> Allocation:
    """Return Thompson-sampling allocation weights from per-arm counts.

    ``weights[k] = min_share + (1 - K * min_share) * P(best_k)``: every arm keeps at least
    ``min_share`` and the weights sum to 1. Until every arm has ``warmup`` trials the weights
    are ``initial`` (default equal). Deterministic: same counts, same weights.
    """
    k = len(trials)
    if k < 2 or len(successes) != k:
        raise ValueError("thompson_weights: one success count per arm, at least 2 arms")
    if not 0.0 <= min_share * k <= 1.0:
        raise ValueError(f"min_share: expected a number in [0, 1/{k}]")
    p = tuple(prob_best(successes, trials))
    if min(trials) < warmup:
        w = tuple(initial) if initial is not None else tuple(1.0 / k for _ in range(k))
        total = sum(w)
        return Allocation(tuple(x / total for x in w), p, True)
    total_p = sum(p) or 1.0
    weights = tuple(min_share + (1.0 - k * min_share) * (x / total_p) for x in p)
    return Allocation(weights, p, False)


def update_bandit(
    experiment: Experiment,
    arms: Sequence[ArmCounts],
    epoch: int,
    *,
    min_share: float = DEFAULT_MIN_SHARE,
    warmup: int = DEFAULT_WARMUP,
    initial: Sequence[float] | None = None,
) -> tuple[Experiment, Allocation]:
    """Return ``experiment`` reweighted for decision ``epoch`` from live counts, and why.

    ``arms`` must be in variant order. The primary metric's successes drive the posterior.
    Call once per epoch (e.g. hourly) and swap the result into the registry.
    """
    if not experiment.bandit:
        raise ValueError(f"experiment {experiment.key!r}: not a bandit experiment")
    if [a.name for a in arms] != [v.name for v in experiment.variants]:
        raise ValueError(f"experiment {experiment.key!r}: arms must match variants in order")
    metric = experiment.primary_metric.value
    alloc = thompson_weights(
        [a.successes(metric) for a in arms],
        [a.exposures for a in arms],
        min_share=min_share,
        warmup=warmup,
        initial=initial,
    )
    return experiment.with_weights(alloc.weights, epoch=epoch), alloc


def choose_arm(seed: str, user_id: str, epoch: int, weights: Sequence[float]) -> int:
    """Return the arm for ``user_id`` in decision ``epoch``: hash of (seed, user, epoch).

    Uses GrowthBook hash v2 with seed ``f"{seed}:e{epoch}"`` (what a bandit Experiment's
    ``hash_seed`` holds in phase 0) and the bucket ranges of ``weights`` (full coverage).
    Returns the last arm if float rounding leaves a gap at the top of the range.
    """
    n = gb_hash(f"{seed}:e{epoch}", user_id, 2)
    i = choose_variation(n, bucket_ranges(len(weights), 1.0, weights))  # type: ignore[arg-type]
    return i if i >= 0 else len(weights) - 1
