"""Thompson-sampling bandit: traffic moves to the better arm, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest

from rankly.engine.experiments.assignment import assign_one, parse_experiment
from rankly.engine.experiments.bandit import choose_arm, thompson_weights, update_bandit
from rankly.engine.experiments.stats import ArmCounts


def _bandit(**kw):
    raw = {
        "key": "bandit-1",
        "status": "running",
        "bandit": True,
        "primary_metric": "ctr",
        "variants": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
    }
    raw.update(kw)
    return parse_experiment(raw)


def test_traffic_moves_to_the_better_arm_in_a_seeded_simulation():
    rng = np.random.default_rng(6)
    true_rates = np.array([0.04, 0.05, 0.08])
    experiment = _bandit()
    exposures = np.zeros(3, dtype=int)
    clicks = np.zeros(3, dtype=int)
    shares = []
    for epoch in range(12):
        arms_this_epoch = np.zeros(3, dtype=int)
        for u in range(1500):
            a = assign_one(experiment, f"user-{epoch}-{u}")
            assert a is not None
            arms_this_epoch[experiment.variants.index(a.variant)] += 1  # type: ignore[arg-type]
        hits = rng.binomial(arms_this_epoch, true_rates)
        exposures += arms_this_epoch
        clicks += hits
        shares.append(arms_this_epoch / arms_this_epoch.sum())
        counts = [
            ArmCounts(v.name, int(n), int(c), 0)
            for v, n, c in zip(experiment.variants, exposures, clicks, strict=True)
        ]
        experiment, alloc = update_bandit(experiment, counts, epoch + 1)
    assert shares[0] == pytest.approx([1 / 3] * 3, abs=0.05)  # warm-up: equal split
    assert shares[-1][2] > 0.8
    assert alloc.p_best[2] > 0.95
    assert min(alloc.weights) >= 0.01 - 1e-12


def test_weights_are_reproducible():
    one = thompson_weights([40, 55, 70], [1000, 1000, 1000])
    two = thompson_weights([40, 55, 70], [1000, 1000, 1000])
    assert one == two and sum(one.weights) == pytest.approx(1.0)


def test_min_share_floor_holds_for_hopeless_arms():
    alloc = thompson_weights([10, 500], [10_000, 10_000], min_share=0.05)
    assert alloc.weights[0] == pytest.approx(0.05, abs=1e-9)
    assert alloc.weights[1] == pytest.approx(0.95, abs=1e-9)


def test_warm_up_keeps_initial_weights_until_every_arm_has_100_exposures():
    alloc = thompson_weights([0, 90], [99, 1000])
    assert alloc.warming_up and alloc.weights == pytest.approx((0.5, 0.5))
    assert not thompson_weights([0, 90], [100, 1000]).warming_up


def test_choose_arm_is_a_pure_function_of_seed_user_and_epoch():
    w = [0.2, 0.3, 0.5]
    first = [choose_arm("s", f"u{i}", 3, w) for i in range(2000)]
    assert first == [choose_arm("s", f"u{i}", 3, w) for i in range(2000)]
    other_epoch = [choose_arm("s", f"u{i}", 4, w) for i in range(2000)]
    assert first != other_epoch
    assert np.bincount(first, minlength=3) / 2000 == pytest.approx(w, abs=0.04)


def test_bandit_experiment_assignment_equals_choose_arm():
    experiment = _bandit().with_weights([0.1, 0.2, 0.7], epoch=5)
    assert experiment.phase == 0 and experiment.hash_seed == "bandit-1:e5"
    for i in range(500):
        a = assign_one(experiment, f"u{i}")
        assert a is not None
        idx = experiment.variants.index(a.variant)  # type: ignore[arg-type]
        assert idx == choose_arm("bandit-1", f"u{i}", 5, experiment.weights)
        assert a.probability == pytest.approx(experiment.weights[idx])


def test_update_bandit_rejects_mismatched_arms():
    with pytest.raises(ValueError, match="match variants"):
        update_bandit(_bandit(), [ArmCounts("a", 1), ArmCounts("c", 1), ArmCounts("b", 1)], 1)
    with pytest.raises(ValueError, match="not a bandit"):
        update_bandit(_bandit(bandit=False), [], 1)


def test_allocation_report_says_lifts_are_biased():
    report = thompson_weights([40, 55], [1000, 1000]).as_dict(["a", "b"])
    assert "biased" in report["note"] and set(report["p_best"]) == {"a", "b"}  # type: ignore[arg-type]
