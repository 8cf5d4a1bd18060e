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

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import numpy as np

from ..config import positive_float, positive_int


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
    #: per served variant ("" outside experiments): [requests, impressions, clicks,
    #: purchases, expected clicks]
    variants: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "impressions": self.impressions,
                "clicks": self.clicks, "purchases": self.purchases, "ctr": self.ctr,
                "expected_ctr": self.expected_clicks / max(self.impressions, 1),
                "variants": {k: {"requests": int(v[0]), "impressions": int(v[1]),
                                 "clicks": int(v[2]), "purchases": int(v[3]),
                                 "ctr": v[2] / max(v[1], 1),
                                 "expected_ctr": v[4] / max(v[1], 1)}
                             for k, v in sorted(self.variants.items())}}


def drive(client: HttpClient, sim: Simulator, requests: int, n: int = 10, seed: int = 0,
          users: Sequence[str] | None = None, seconds: float | None = None) -> DriveResult:
    """Ask for ``requests`` slates (at most, and for at most ``seconds``) for random users,
    click and buy by the simulator's model, post the outcomes with their ``request_id``;
    return the totals."""
    rng = np.random.default_rng(seed)
    pool = list(users or sim.user_ids)
    out = DriveResult()
    stop = None if seconds is None else time.monotonic() + seconds
    for _ in range(requests):
        if stop is not None and time.monotonic() > stop:
            break
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
        expected = float(sim.click_probabilities(user, shown).sum())
        out.expected_clicks += expected
        tally = out.variants.setdefault(body.get("variant") or "", [0.0] * 5)
        for j, v in enumerate((1, len(shown), int(clicks.sum()), int(buys.sum()), expected)):
            tally[j] += v
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


# --- rankly simulate --------------------------------------------------------------------------


_dumps = json.dumps  # `json` is an argument name below (httpx's and TestClient's API)


@dataclass
class _Reply:
    status_code: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class UrlClient:
    """The two calls :func:`drive` makes, over HTTP with the standard library."""

    def __init__(self, base: str, timeout: float = 10.0) -> None:
        self.base = base.rstrip("/")
        self.timeout = timeout

    def _send(self, req: urllib.request.Request) -> _Reply:
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return _Reply(r.status, r.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            return _Reply(exc.code, exc.read().decode("utf-8", "replace"))

    def get(self, url: str, params: dict[str, Any] | None = None, **_: Any) -> _Reply:
        query = "?" + urllib.parse.urlencode(params) if params else ""
        return self._send(urllib.request.Request(self.base + url + query))

    def post(self, url: str, json: Any = None, **_: Any) -> _Reply:  # noqa: A002
        body = _dumps(json).encode("utf-8")
        return self._send(urllib.request.Request(
            self.base + url, data=body, method="POST",
            headers={"content-type": "application/json"}))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="a running rankly server")
    parser.add_argument("--artifacts", required=True,
                        help="the served model's directory (its users and items)")
    parser.add_argument("--requests", type=positive_int, default=1000,
                        help="at most (default 1000)")
    parser.add_argument("--seconds", type=positive_float, default=60.0,
                        help="at most (default 60)")
    parser.add_argument("--users", type=int, default=0,
                        help="draw from the first N users only (default 0: all)")
    parser.add_argument("--n", type=positive_int, default=10, help="slate size (default 10)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the hidden tastes and of the clicks")
    parser.add_argument("--json", action="store_true", help="print the totals as JSON")


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    from ..model import load_model

    out = out or sys.stdout
    sim = Simulator.for_model(load_model(args.artifacts), seed=args.seed)
    users = sim.user_ids[: args.users] if args.users > 0 else None
    result = drive(UrlClient(args.url), sim, args.requests, n=args.n, seed=args.seed,
                   users=users, seconds=args.seconds)
    doc = result.as_dict()
    if args.json:
        print(json.dumps(doc, indent=1), file=out)
        return 0
    print(f"{doc['requests']} requests, {doc['impressions']} impressions, {doc['clicks']} "
          f"clicks (CTR {doc['ctr']:.4f}, expected {doc['expected_ctr']:.4f}), "
          f"{doc['purchases']} purchases", file=out)
    for name, v in doc["variants"].items():
        print(f"  {name or '(no experiment)':<20} {v['requests']:>6} requests  CTR "
              f"{v['ctr']:.4f}  expected {v['expected_ctr']:.4f}", file=out)
    return 0
