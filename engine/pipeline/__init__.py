"""The request path: :func:`rank` answers one request (see ``request.py``, on one screen).

``plan`` chooses the components, ``cache`` holds the cache machinery behind one call,
``stages`` the selection stages, ``respond`` the answer's JSON, ``served`` what its impressions
log of the computation and ``quality`` the served slates' rolling quality. The
one-computation-per-key primitive the cache uses is the host's ``singleflight`` (the runtime
holds it).
"""

from .cache import FEATURES_FIELD, cache_key
from .plan import Plan, choose_plan, default_plan
from .request import compute, inline, rank, request_deadline, safe_answer, warm_up
from .stages import Trace, fetch_features, select

__all__ = [
    "FEATURES_FIELD", "Plan", "Trace", "cache_key", "choose_plan", "compute", "default_plan",
    "fetch_features", "inline", "rank", "request_deadline", "safe_answer", "select", "warm_up",
]
