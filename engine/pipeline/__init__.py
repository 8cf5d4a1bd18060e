"""The request path: :func:`rank` answers one request (see ``request.py``, on one screen).

``plan`` chooses the components, ``cache`` holds the cache machinery behind one call,
``stages`` the selection stages, ``respond`` the answer's JSON, ``served`` what its impressions
log of the computation, ``quality`` the served slates' rolling quality and ``singleflight``
the one-computation-per-key primitive.
"""

from .cache import FEATURES_FIELD, cache_key
from .plan import Plan, choose_plan, default_plan
from .request import compute, inline, rank, request_deadline, safe_answer, warm_up
from .stages import Trace, fetch_features, select

__all__ = [
    "FEATURES_FIELD", "Plan", "Trace", "cache_key", "choose_plan", "compute", "default_plan",
    "fetch_features", "inline", "rank", "request_deadline", "safe_answer", "select", "warm_up",
]
