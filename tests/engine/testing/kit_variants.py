"""A plugin nobody here has seen: a correct scorer and broken variants of it (one defect each).

Loaded in-process by tests/engine/testing/test_testing_kit.py and, as an installed distribution
(a dist-info directory on PYTHONPATH), by ``rankly plugins check`` in a subprocess.
"""

import time

import numpy as np

from rankly.engine.api import Candidates, Ranking, Reason, hookimpl


class SeededRandom:
    """Correct: a fixed random score per item, from a seed."""

    def __init__(self, n_items: int, seed: int = 0) -> None:
        self.table = np.random.default_rng(seed).random(n_items).astype(np.float32)

    def score(self, user, items):
        return self.table[items]


class WrongLength(SeededRandom):
    def score(self, user, items):
        return self.table[items][:-1]


class ReturnsNaN(SeededRandom):
    def score(self, user, items):
        out = self.table[items].copy()
        out[::2] = np.nan
        return out


class MutatesInput(SeededRandom):
    def score(self, user, items):
        items.sort()
        return self.table[items]


class TooSlow(SeededRandom):
    def score(self, user, items):
        time.sleep(0.005)  # at least 5 ms a call, whatever the machine: over a 1 ms budget
        return self.table[items]


class Raises(SeededRandom):
    def score(self, user, items):
        raise ValueError("no table for this user")


class Float64(SeededRandom):
    def score(self, user, items):
        return self.table[items].astype(np.float64)


class Forgetful(SeededRandom):
    """Fails only for users the model does not know."""

    def score(self, user, items):
        if user.row < 0:
            raise KeyError(user.user_id)
        return self.table[items]


class Racy(SeededRandom):
    """Not thread-safe: keeps the request's user on the instance while it works."""

    def score(self, user, items):
        self.user = user
        time.sleep(0.001)  # another thread's call replaces self.user meanwhile
        return self.table[items] + np.float32(max(self.user.row, 0))


VARIANTS = {"seeded-random": SeededRandom, "wrong-length": WrongLength,
            "returns-nan": ReturnsNaN, "mutates-input": MutatesInput, "too-slow": TooSlow,
            "raises": Raises, "float64": Float64, "forgetful": Forgetful, "racy": Racy}


class DuplicateGenerator:
    def generate(self, user, n):
        items = np.array([3, 3, 4][: max(n, 0)], dtype=np.int64)
        return Candidates.of(items, Reason.POPULAR)


class OutsideGenerator:
    def generate(self, user, n):
        return Candidates.of(np.array([10_000], dtype=np.int64)[:n], Reason.POPULAR)


class InventingReranker:
    def rerank(self, user, ranking, n):
        out = ranking.take(np.arange(min(n, len(ranking))))
        items = out.items.copy()
        if items.size:
            items[0] = 299 if 299 not in ranking.items else 0
        return Ranking(items, out.scores, out.reasons, out.anchors)


class LeakyCache:
    """Keeps serving a user's entries after invalidate_user."""

    def __init__(self) -> None:
        self.data = {}

    async def get(self, key, user_id=None):
        return self.data.get(key)

    async def set(self, key, user_id, value):
        self.data[key] = value

    async def invalidate_user(self, user_id):
        pass


class NaNTrainer:
    def fit(self, data, options):
        from rankly.engine.api import ModelPart

        return ModelPart("nan-part", {}, {"scores": np.full(data.n_items, np.nan, np.float32)})


@hookimpl
def register_scorers(register):
    for name, cls in VARIANTS.items():
        register(name, lambda ctx, cls=cls: cls(len(ctx.model.catalog), **ctx.options),
                 options={"seed": 0})


@hookimpl
def register_candidate_generators(register):
    register("duplicates", lambda ctx: DuplicateGenerator())
    register("outside", lambda ctx: OutsideGenerator())


@hookimpl
def register_rerankers(register):
    register("inventing", lambda ctx: InventingReranker())


@hookimpl
def register_caches(register):
    register("leaky", lambda ctx: LeakyCache())


@hookimpl
def register_trainers(register):
    register("nan-trainer", NaNTrainer())
