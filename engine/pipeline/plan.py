"""Which components serve a request: the default plan, or an experiment variant's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..experiments import Assignment, assign_user
from ..types import RecommendationRequest

if TYPE_CHECKING:
    from ..runtime import Runtime


@dataclass(frozen=True)
class Plan:
    """Which components serve this request: the defaults or an experiment variant's."""

    candidates: tuple[str, ...]
    scorers: tuple[str, ...]
    rerankers: tuple[str, ...]
    variant: str | None = None
    experiment: str | None = None
    probability: float | None = None
    options: Mapping[str, Mapping[str, Any]] | None = None


def default_plan(rt: Runtime) -> Plan:
    p = rt.settings.pipeline
    made = _default_plan
    if made[0] is not p:  # built once per settings: every request asks (#16)
        made[:] = [p, Plan(p.candidates, p.scorers, p.rerankers)]
    return made[1]


_default_plan: list[Any] = [None, None]  # [pipeline settings, their plan]


def choose_plan(rt: Runtime, req: RecommendationRequest) -> tuple[Plan, Assignment | None]:
    """The experiment variant's plan for this user, or the default plan (O(experiments))."""
    base = default_plan(rt)
    if not rt.experiments.running:
        return base, None
    a = assign_user(rt.experiments, req.user_id)
    if a is None:
        return base, None
    o = a.overrides
    return Plan(
        candidates=base.candidates if o.candidates is None else o.candidates,
        scorers=base.scorers if o.scorers is None else o.scorers,
        rerankers=base.rerankers if o.rerankers is None else o.rerankers,
        variant=a.variant_name or "holdout",
        experiment=a.experiment.key,
        probability=a.probability,
        options=o.options or None,
    ), a
