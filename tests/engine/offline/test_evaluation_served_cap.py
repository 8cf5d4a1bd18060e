"""The "Cap ok" column of the served setup checks the cap its diversity reranker applies."""

from __future__ import annotations

import numpy as np

from rankly.engine import api
from rankly.engine.config import PipelineSettings, Settings
from rankly.engine.offline import evaluation
from rankly.engine.offline.interactions import Interactions, ItemTable, build_training_data
from rankly.engine.plugins import make_plugin_manager
from rankly.plugins.models import popularity
from rankly.plugins.rerankers import diversity


class _CapChooser:
    """A part that, like the blend, chooses the diversity cap the model is served with."""

    @api.hookimpl
    def register_trainers(self, register):
        class Trainer:
            def fit(self, data, options):
                return api.ModelPart("capper", {"serving_options": {"diversity": {"cap": 5}}},
                                     {}, {})

        register("capper", Trainer())


def test_the_served_cap_ok_checks_the_cap_training_chose(monkeypatch):
    # the twelve most popular items share one category: popularity's top ten hold ten of
    # it, the reranker keeps five (the model's cap) and fills with other categories
    rows = [(f"u{u}", f"m{i}") for u in range(30) for i in range(12) if (u + i) % 4]
    rows += [(f"u{u}", f"z{i}") for u in range(30) for i in range(10) if u % 10 == i]
    users, items = (np.array(c, dtype=str) for c in zip(*rows, strict=True))
    data = build_training_data(
        Interactions(users, items, np.ones(users.size, np.float32),
                     np.arange(users.size, dtype=np.int64)),
        ItemTable(np.unique(items), np.unique(items),
                  [("hot" if i.startswith("m") else f"c{i}",) for i in np.unique(items)]))
    targets = {f"u{u}": np.arange(3, dtype=np.int64) for u in range(5)}
    pm = make_plugin_manager(load_entrypoints=False, extra=(popularity, diversity,
                                                            _CapChooser()))
    setup = evaluation.Setup((("pop", {}), ("capper", {})), ("popular",), ("popular",),
                             ("diversity",))
    settings = Settings(pipeline=PipelineSettings(similar=("popular",)))
    result = evaluation.evaluate_setup("served", setup, data, targets, settings, pm, 10,
                                       None, False)
    assert result.cap == 5
    assert result.groups["warm"]["cap_ok"] == 1.0
