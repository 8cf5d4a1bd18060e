"""Exploration: a served slate's first items shuffled at random, with exact propensities.

Off-policy estimates (``rankly off-policy``, feedback/offpolicy.py) weigh each logged impression
by 1 / P(its item at its position under the serving policy). A deterministic ranking gives
that probability 1 to the item it served and 0 to every other, so no other ranking can be
evaluated from its logs. With ``[exploration] rate = r`` (default 0: off) and ``top_m = M``,
each served slate independently has its first ``m = min(M, len(slate))`` items shuffled
uniformly at random with probability ``r``; items after them keep their place. The item the
ranking put at position ``j`` is then shown at position ``k`` (both ``< m``) with probability

    (1 - r) * [j == k] + r / m

and every impression logs that number (``propensity``) with ``base_position = j``. A uniform
shuffle, rather than Plackett-Luce sampling, because its marginals are exact in closed form
(Plackett-Luce position marginals need a sum over the items placed before) and it gives every
item of the top ``m`` a chance at every one of those positions, which the per-position IPS
estimator needs.
"""

from __future__ import annotations

import random
from typing import Any

from ..config import ExplorationSettings

_rng = random.Random()


def explore(items: list[Any], settings: ExplorationSettings,
            rng: random.Random | None = None) -> tuple[list[Any], list[dict[str, Any]] | None]:
    """Return ``(shown, positions)``: ``items`` possibly shuffled, and per shown position
    ``{"propensity", "base_position"}``; ``positions`` is None when exploration is off (every
    propensity is then 1.0). ``items`` is not modified."""
    rate = settings.rate
    if rate <= 0 or len(items) < 2:
        return items, None
    rng = rng or _rng
    m = min(settings.top_m, len(items))
    base = list(range(len(items)))
    if rng.random() < rate:
        head = base[:m]
        rng.shuffle(head)
        base[:m] = head
    off, on = (1.0 - rate) + rate / m, rate / m
    positions = [{"propensity": (off if j == k else on) if k < m else 1.0, "base_position": j}
                 for k, j in enumerate(base)]
    return [items[j] for j in base], positions


def explore_answer(settings: ExplorationSettings, body: dict[str, Any]
                   ) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """An answer with its items explored (a new dict when they moved), and the positions'
    propensities for its impressions (None when exploration is off)."""
    items = body.get("items") or []
    shown, positions = explore(items, settings)
    if positions is None:
        return body, None
    return {**body, "items": shown}, positions
