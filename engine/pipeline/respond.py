"""The answer a client sees: a ranking as JSON-ready items with their reason texts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..model import Model
from ..types import (
    Ranking,
    Reason,
    RecommendationRequest,
    UserFeatures,
)
from .plan import Plan
from .stages import Trace

if TYPE_CHECKING:
    from ..runtime import Components


def respond(comps: Components, req: RecommendationRequest, plan: Plan, user: UserFeatures,
            ranking: Ranking, trace: Trace) -> dict:
    model = comps.model
    return {
        "user_id": req.user_id,
        "items": slate_items(model, user, ranking),
        "variant": plan.variant,
        "experiment": plan.experiment,
        "model_version": model.version,
        "fallback": trace.fallback,
    }

#: (reason, anchor) texts kept per catalog at most; past it they are built per request
MAX_REASON_TEXTS = 1 << 18


def slate_items(model: Model, user: UserFeatures, ranking: Ranking) -> list[dict]:
    ids = model.catalog.id_list()
    texts = model.catalog.memo.setdefault("reasons", {})
    out = []
    for i, s, r, a in zip(ranking.items.tolist(), ranking.scores.tolist(),
                          ranking.reasons.tolist(), ranking.anchors.tolist(), strict=True):
        key = (_session_reason(r, user), a)
        text = texts.get(key)
        if text is None:
            text = reason_text(model, *key)
            if len(texts) < MAX_REASON_TEXTS:
                texts[key] = text
        out.append({"item_id": ids[i], "score": round(s, 6), "reasons": [text]})
    return out


def reason_text(model: Model, reason: int, anchor: int) -> str:
    catalog = model.catalog
    if reason == Reason.BECAUSE_YOU_LIKED and 0 <= anchor < len(catalog):
        return f"Because you liked {catalog.title(anchor)}"
    if reason == Reason.SIMILAR_TO and 0 <= anchor < len(catalog):
        return f"Similar to {catalog.title(anchor)}"
    if reason == Reason.TRENDING_IN and anchor >= 0:
        return f"Trending in {catalog.category_name(anchor)}"
    if reason == Reason.NEW:
        return "New"
    if reason == Reason.FOR_YOU:
        return "Matches your taste"
    if reason == Reason.BOOSTED:
        return "Featured"
    return "Popular"


def _session_reason(reason: int, user: UserFeatures) -> int:
    """For anonymous sessions and item pages, "liked" anchors read as "similar to"."""
    return Reason.SIMILAR_TO if user.session and reason == Reason.BECAUSE_YOU_LIKED else reason
