"""A shop's simulated users: hidden preferences and position-biased clicks, for testing what
learns from feedback (off-policy estimates, the learned ranker) end to end.

A user clicks the item at position ``k`` (0-based) with probability ``theta_k * alpha(u, a)``
(the position-based click model): ``theta_k = (k + 1) ** -eta`` is the chance the position
is looked at, ``alpha = sigmoid(scale * <x_u, y_a> / sqrt(d) + b_a + offset)`` how much the
user likes the item, from latent vectors the served model never sees. A click becomes a
purchase with probability ``purchase * alpha``. The simulator either writes logs directly
(:meth:`Simulator.log_lines`, exact ground truth) or drives a rankly server through its HTTP
API (:func:`drive`: the real pipeline, impression logging and event ingestion).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class Simulator:
    """Hidden preferences of ``user_ids`` over ``item_ids`` and the click model over them."""

    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    alpha: np.ndarray  # (users, items) float64 attractiveness in (0, 1)
    eta: float = 1.0
    purchase: float = 0.3

    @classmethod
    def create(cls, user_ids: Sequence[str], item_ids: Sequence[str], *, dim: int = 8,
               scale: float = 2.0, offset: float = -2.0, eta: float = 1.0,
               purchase: float = 0.3, seed: int = 0) -> Simulator:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(len(user_ids), dim))
        y = rng.normal(size=(len(item_ids), dim))
        b = rng.normal(size=len(item_ids)) * 0.5
        logits = scale * (x @ y.T) / np.sqrt(dim) + b[None, :] + offset
        return cls(tuple(map(str, user_ids)), tuple(map(str, item_ids)),
                   1.0 / (1.0 + np.exp(-logits)), eta, purchase)

    @classmethod
    def for_model(cls, model: Any, *, dim: int = 8, scale: float = 2.5, offset: float = -2.5,
                  taste: float = 0.7, eta: float = 1.0, purchase: float = 0.3,
                  seed: int = 0) -> Simulator:
        """Users and items of a trained ``model``, with tastes it can partly see: items of
        one category share a random center, and a user's vector leans (``taste``) towards
        the items of their trained history; the rest is noise the model never saw."""
        rng = np.random.default_rng(seed)
        cats = np.asarray(model.catalog.categories)
        centers = rng.normal(size=(int(max(cats.max(), 0)) + 1, dim))
        y = np.where(cats[:, None] >= 0, centers[np.maximum(cats, 0)], 0.0) * 0.8 \
            + rng.normal(size=(cats.size, dim)) * 0.8
        users = model.users
        x = rng.normal(size=(len(users), dim))
        for row in range(len(users)):
            h = users.history(row)
            if h.size:
                lean = y[h].mean(axis=0)
                x[row] = taste * lean / max(np.linalg.norm(lean), 1e-9) * np.sqrt(dim) \
                    + (1 - taste) * x[row]
        b = rng.normal(size=cats.size) * 0.5
        logits = scale * (x @ y.T) / dim + b[None, :] + offset
        return cls(tuple(str(u) for u in users.user_ids.tolist()),
                   tuple(model.catalog.id_list()), 1.0 / (1.0 + np.exp(-logits)), eta,
                   purchase)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_users", {u: i for i, u in enumerate(self.user_ids)})
        object.__setattr__(self, "_items", {a: i for i, a in enumerate(self.item_ids)})

    def theta(self, n: int) -> np.ndarray:
        """Examination probability of positions ``0..n-1``."""
        return (np.arange(n) + 1.0) ** -self.eta

    def attractiveness(self, user_id: str, items: Sequence[str]) -> np.ndarray:
        u = self._users[user_id]  # type: ignore[attr-defined]
        cols = [self._items.get(a, -1) for a in items]  # type: ignore[attr-defined]
        return np.array([self.alpha[u, c] if c >= 0 else 0.0 for c in cols])

    def click_probabilities(self, user_id: str, items: Sequence[str]) -> np.ndarray:
        return self.theta(len(items)) * self.attractiveness(user_id, items)

    def expected_ctr(self, user_id: str, items: Sequence[str]) -> float:
        """Expected clicks per shown position of this slate."""
        return float(self.click_probabilities(user_id, items).mean()) if items else 0.0

    def respond(self, user_id: str, items: Sequence[str], rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
        """Sampled (clicks, purchases) per position."""
        p = self.click_probabilities(user_id, items)
        clicks = rng.random(p.size) < p
        buys = clicks & (rng.random(p.size) < self.purchase * self.attractiveness(user_id, items))
        return clicks, buys

    def best(self, user_id: str, items: Sequence[str], n: int) -> list[str]:
        """The ``n`` of ``items`` this user likes most (an oracle ranking)."""
        a = self.attractiveness(user_id, items)
        return [items[j] for j in np.argsort(-a, kind="stable")[:n]]

    def log_lines(self, user_id: str, shown: Sequence[str], request_id: str, ts: float,
                  rng: np.random.Generator, positions: Sequence[dict[str, Any]] | None = None,
                  with_request_id: bool = True) -> list[str]:
        """Event-log lines (the file log's format) of one served slate and its outcomes."""
        out = []
        for k, item in enumerate(shown):
            ctx = {"position": k, **(positions[k] if positions else {"propensity": 1.0})}
            out.append(json.dumps({"id": f"imp:{request_id}:{k}", "u": user_id, "i": item,
                                   "t": "impression", "ts": ts, "r": request_id, "c": ctx}))
        clicks, buys = self.respond(user_id, shown, rng)
        for k in np.flatnonzero(clicks).tolist():
            for kind in ("click", "purchase") if buys[k] else ("click",):
                doc = {"id": uuid.uuid4().hex, "u": user_id, "i": shown[k], "t": kind,
                       "ts": ts + 5.0 + k}
                if with_request_id:
                    doc["r"] = request_id
                out.append(json.dumps(doc))
        return out


class HttpClient(Protocol):
    """What :func:`drive` needs: httpx.Client, starlette's TestClient."""

    def get(self, url: str, **kwargs: Any) -> Any: ...

    def post(self, url: str, **kwargs: Any) -> Any: ...


@dataclass
class DriveResult:
    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    purchases: int = 0
    expected_clicks: float = 0.0  # of the slates as served (the simulator's ground truth)

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0


def drive(client: HttpClient, sim: Simulator, requests: int, n: int = 10, seed: int = 0,
          users: Sequence[str] | None = None) -> DriveResult:
    """Ask for ``requests`` slates for random users, click and buy by the simulator's model,
    post the outcomes with their ``request_id``; return the totals."""
    rng = np.random.default_rng(seed)
    pool = list(users or sim.user_ids)
    out = DriveResult()
    for _ in range(requests):
        user = pool[int(rng.integers(len(pool)))]
        rid = uuid.uuid4().hex
        body = client.get("/recommendations", params={"user_id": user, "n": n,
                                                      "request_id": rid}).json()
        shown = [it["item_id"] for it in body["items"]]
        clicks, buys = sim.respond(user, shown, rng)
        out.requests += 1
        out.impressions += len(shown)
        out.clicks += int(clicks.sum())
        out.purchases += int(buys.sum())
        out.expected_clicks += float(sim.click_probabilities(user, shown).sum())
        events = []
        for k in np.flatnonzero(clicks).tolist():
            for kind in ("click", "purchase") if buys[k] else ("click",):
                events.append({"event_id": uuid.uuid4().hex, "user_id": user,
                               "item_id": shown[k], "type": kind, "request_id": rid})
        if events:
            r = client.post("/events", json=events)
            if r.status_code != 202:
                raise RuntimeError(f"POST /events answered {r.status_code}: {r.text[:200]}")
    return out
