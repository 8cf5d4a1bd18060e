"""EASE: the closed-form item-item linear model (Steck, WWW 2019) for catalogs up to ~20k items.

Part ``ease`` holds ``items`` (int64: the catalog indices that had training interactions) and
``weights`` (float32 [len(items), len(items)], zero diagonal). Items without interactions get
no weights (their rows of the Gram matrix are only lambda), so they score 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from threadpoolctl import threadpool_limits

from rankly.engine.api import ComponentContext, DataRefused, ModelPart, TrainingData, hookimpl
from rankly.plugins.models.linear import (  # noqa: F401 (the EASE math, re-exported)
    EaseScorer,
    active_items,
    decayed_matrix,
    gram,
    item_weights,
    mix_weights,
)

NAME = "ease"
MAX_ITEMS = 25_000
#: The keys of ``[plugins.ease]`` (training and serving share the section) and defaults.
OPTIONS = {"lambda": 500.0, "dropout": 0.0, "diagonal_bound": 0.0, "age_half_life_days": 0.0,
           "min_count": 1, "max_items": MAX_ITEMS, "blas_threads": 1,
           "low_lambda_share": 0.0, "low_lambda_factor": 0.2}


class EaseTrainer:
    """Options: ``lambda`` (L2 strength, default 500), ``dropout`` (EDLAE emphasis in [0, 1),
    default 0 = plain EASE), ``diagonal_bound`` (RLAE: allow ``diag(B)`` up to it, in
    [0, 1); default 0 = EASE's zero diagonal; :func:`item_weights`), ``age_half_life_days``
    (weigh training pairs by their age, :func:`decayed_matrix`; default 0 = no decay),
    ``min_count`` (items with fewer users get no weights, default 1), ``max_items`` (refuse
    above; 25k), ``blas_threads`` (1),
    ``low_lambda_share`` ``a`` in [0, 1) and ``low_lambda_factor`` ``f`` in (0, 1]: the
    weights are ``(1 - a) * B(lambda) + a * B(f * lambda)``, a second fit at a smaller lambda
    mixed in (default 0: one fit; the blend's validation chooses it)."""

    def fit(self, data: TrainingData, options: Mapping[str, Any]) -> ModelPart:
        lam = float(options.get("lambda", 500.0))
        dropout = float(options.get("dropout", 0.0))
        bound = float(options.get("diagonal_bound", 0.0))
        min_count = int(options.get("min_count", 1))
        limit = int(options.get("max_items", MAX_ITEMS))
        age_half_life = float(options.get("age_half_life_days", 0.0))
        low_share = float(options.get("low_lambda_share", 0.0))
        low_factor = float(options.get("low_lambda_factor", 0.2))
        if not 0.0 <= low_share < 1.0:
            raise ValueError(f"ease: low_lambda_share must be in [0, 1), got {low_share}")
        if low_share and not 0.0 < low_factor <= 1.0:
            raise ValueError(f"ease: low_lambda_factor must be in (0, 1], got {low_factor}")
        x = data.binary_matrix()
        active = active_items(x, min_count, x.shape[1])
        if active.size > limit:
            raise DataRefused(
                f"ease: {active.size} items exceed max_items={limit} (a dense "
                f"{active.size}x{active.size} inverse); use itemknn/als or raise the limit"
            )
        xd, factor = decayed_matrix(data, age_half_life)
        xa = xd[:, active]
        # NOTE: one BLAS thread by default: OpenBLAS threads that find the other core busy
        # spin, and the inverse then takes several times longer than on one thread.
        with threadpool_limits(int(options.get("blas_threads", 1)), "blas"):
            g = gram(xa)
            b = item_weights(g, lam * factor, dropout, bound)
            if low_share:
                b = mix_weights(b, item_weights(g, lam * factor * low_factor, dropout, bound),
                                low_share)
        return ModelPart(
            name=NAME, params={"lambda": lam, "dropout": dropout, "diagonal_bound": bound,
                               "min_count": min_count,
                               "age_half_life_days": age_half_life,
                               "low_lambda_share": low_share,
                               "low_lambda_factor": low_factor},
            arrays={"items": active, "weights": b},
            metrics={"n_active_items": int(active.size)},
        )


def _factory(ctx: ComponentContext) -> EaseScorer | None:
    return EaseScorer.from_model(ctx.model)


@hookimpl
def register_trainers(register):
    register(NAME, EaseTrainer(), options=OPTIONS)


@hookimpl
def register_candidate_generators(register):
    register(NAME, _factory, options=OPTIONS)


@hookimpl
def register_scorers(register):
    register(NAME, _factory, options=OPTIONS)
