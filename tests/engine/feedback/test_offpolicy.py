"""Off-policy estimators: against reference formulas, and against the simulator's ground truth.

Vowpal Wabbit's estimators (``vw-estimators``, a test dependency) are the reference for IPS,
SNIPS and the Gaussian interval: each (request, position) slot is one bandit example, with the
logged item's propensity, its click, and 1 or 0 as the evaluated ranking's probability of the
same item there. They have no doubly robust estimator, and Open Bandit Pipeline (``obp``)
cannot be installed here (its releases pin pandas 1.5.2, scipy 1.9.3 and scikit-learn 1.1.3,
or pull torch, and do not build on Python 3.11 with numpy 2), so a second
reference below is written independently, loop by loop, from the definitions: the
independent-item IPS of Li et al. 2018 ("Offline Evaluation of Ranking Policies with Click
Models", eq. for IIPS), which is obp's ``SlateIndependentIPS`` divided by the slate length
(obp estimates clicks per slate, rankly clicks per impression), its self-normalized form
(weights normalized by their sum) and the doubly robust form of Dudik et al. 2011 applied
per position.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from rankly.engine.config import ExplorationSettings
from rankly.engine.feedback.exploration import explore
from rankly.engine.feedback.offpolicy import Logged, base_rankings, estimate, evaluate
from rankly.engine.feedback.slates import join, load_feedback, read_events
from rankly.engine.offline.simulator import Simulator


def reference(rewards, propensity, match, mask, q_logged, q_eval):
    """Plain loops over (request, position) slots; see the module docstring."""
    num = den_w = dr = 0.0
    slots = 0
    for i in range(len(rewards)):
        for k in range(len(rewards[i])):
            if not mask[i][k]:
                continue
            slots += 1
            w = (1.0 / propensity[i][k]) if match[i][k] else 0.0
            num += w * rewards[i][k]
            den_w += w
            dr += q_eval[i][k] + w * (rewards[i][k] - q_logged[i][k])
    return {"ips": num / slots, "snips": num / den_w, "dr": dr / slots}


def test_estimators_equal_the_reference_formulas():
    rng = np.random.default_rng(1)
    n, k = 300, 6
    mask = np.ones((n, k), dtype=bool)
    mask[::7, 4:] = False  # shorter slates
    propensity = rng.uniform(0.05, 1.0, (n, k))
    match = rng.random((n, k)) < 0.4
    rewards = (rng.random((n, k)) < 0.2).astype(float)
    q_logged, q_eval = rng.random((n, k)) * 0.3, rng.random((n, k)) * 0.3
    got = estimate(rewards, propensity, match, mask, q_logged * mask, q_eval * mask)
    want = reference(rewards, propensity, match, mask, q_logged, q_eval)
    for kind in ("ips", "snips", "dr"):
        assert got[kind]["estimate"] == pytest.approx(want[kind], rel=1e-12)
    w = np.where(match & mask, 1 / propensity, 0)
    assert got["ess"] == pytest.approx(w.sum() ** 2 / (w ** 2).sum())


def vw_slots(rewards, propensity, match, mask):
    """(p_log, r, p_pred) of every slot, as Vowpal Wabbit's estimators take them."""
    for i in range(len(rewards)):
        for k in range(len(rewards[i])):
            if mask[i][k]:
                yield float(propensity[i][k]), float(rewards[i][k]), 1.0 if match[i][k] else 0.0


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_ips_and_snips_equal_vowpal_wabbits_estimators(seed):
    vw_ips = pytest.importorskip("estimators.bandits.ips",
                                 reason="vw-estimators not installed (pip install -e '.[test]')")
    from estimators.bandits import snips as vw_snips

    rng = np.random.default_rng(seed)
    n, k = 400, 8
    mask = np.ones((n, k), dtype=bool)
    mask[rng.random(n) < 0.3, 5:] = False  # some shorter slates
    propensity = rng.uniform(0.02, 1.0, (n, k))
    match = rng.random((n, k)) < 0.5
    rewards = (rng.random((n, k)) < 0.15).astype(float)
    ips, snips = vw_ips.Estimator(), vw_snips.Estimator()
    for p_log, r, p_pred in vw_slots(rewards, propensity, match, mask):
        ips.add_example(p_log, r, p_pred)
        snips.add_example(p_log, r, p_pred)
    got = estimate(rewards, propensity, match, mask)
    assert got["ips"]["estimate"] == pytest.approx(ips.get(), rel=1e-12)
    assert got["snips"]["estimate"] == pytest.approx(snips.get(), rel=1e-12)


def test_the_ips_interval_of_one_slot_requests_equals_vowpal_wabbits_gaussian():
    """With one position per request the requests are the examples, so our request-clustered
    interval and VW's per-example Gaussian one must agree."""
    pytest.importorskip("estimators.bandits.gaussian",
                        reason="vw-estimators not installed (pip install -e '.[test]')")
    from estimators.bandits import gaussian

    rng = np.random.default_rng(9)
    n = 2000
    mask = np.ones((n, 1), dtype=bool)
    propensity = rng.uniform(0.1, 1.0, (n, 1))
    match = rng.random((n, 1)) < 0.6
    rewards = (rng.random((n, 1)) < 0.1).astype(float)
    interval = gaussian.Interval()
    for p_log, r, p_pred in vw_slots(rewards, propensity, match, mask):
        interval.add_example(p_log, r, p_pred)
    lo, hi = interval.get(0.05)
    got = estimate(rewards, propensity, match, mask)["ips"]["ci95"]
    assert got == pytest.approx([lo, hi], rel=1e-9)


# --- synthetic logs with known ground truth ------------------------------------------------


def synthetic_log(seed: int, requests: int = 1500, rate: float = 0.5, n: int = 8,
                  with_request_id: bool = True):
    """Logs of a noisy logging ranking with exploration, and the truths of two rankings.

    Returns (lines, truth of the logging ranking before exploration, truth of the oracle
    reordering of the same slates), truths as expected clicks per impression."""
    sim = Simulator.create([f"u{i}" for i in range(100)], [f"i{j}" for j in range(60)],
                           seed=seed)
    rng = np.random.default_rng(seed + 1000)
    prng = random.Random(seed)
    settings = ExplorationSettings(rate=rate, top_m=n)
    lines: list[str] = []
    base_truth = oracle_truth = 0.0
    for r in range(requests):
        user = sim.user_ids[int(rng.integers(len(sim.user_ids)))]
        # logging ranking: the user's taste seen through noise
        noisy = sim.attractiveness(user, sim.item_ids) + rng.normal(0, 0.25, len(sim.item_ids))
        base = [sim.item_ids[j] for j in np.argsort(-noisy)[:n]]
        shown, positions = explore(base, settings, prng)
        lines += sim.log_lines(user, shown, f"r{seed}-{r}", 1.76e9 + 60 * r, rng, positions,
                               with_request_id=with_request_id)
        base_truth += sim.click_probabilities(user, base).sum()
        oracle_truth += sim.click_probabilities(user, sim.best(user, base, n)).sum()
    impressions = requests * n
    return sim, lines, base_truth / impressions, oracle_truth / impressions


def oracle_rankings(sim, feedback, logged):
    out = np.full(logged.items.shape, "", dtype=object)
    for i, s in enumerate(feedback.slates):
        out[i, : len(s.items)] = sim.best(s.user_id, s.items, len(s.items))
    return out


def write(tmp_path, lines):
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_intervals_cover_the_true_ctr_in_most_seeds(tmp_path):
    covered = {k: 0 for k in ("ips", "snips", "dr")}
    ips_errors = []
    seeds = range(12)
    for seed in seeds:
        sim, lines, base_truth, oracle_truth = synthetic_log(seed)
        feedback = load_feedback(write(tmp_path, lines))
        logged = Logged.of(feedback.slates)
        report = evaluate(feedback, {"oracle": oracle_rankings(sim, feedback, logged),
                                     "base": base_rankings(feedback, logged)})
        oracle = report["policies"]["oracle"]["ctr"]
        for kind in covered:
            lo, hi = oracle[kind]["ci95"]
            covered[kind] += lo <= oracle_truth <= hi
        ips_errors.append((oracle["ips"]["estimate"] - oracle_truth) / oracle["ips"]["se"])
        base = report["policies"]["base"]["ctr"]
        assert base["ips"]["ci95"][0] - 3 * base["ips"]["se"] <= base_truth \
            <= base["ips"]["ci95"][1] + 3 * base["ips"]["se"]
        assert report["policies"]["oracle"]["support"] == 1.0
        assert oracle_truth > base_truth  # the oracle is a better ranking
    for kind, hits in covered.items():
        assert hits >= 9, (kind, hits, len(seeds))  # nominal 95%: 11.4 of 12
    # unbiased: the standardized errors average to ~0 (their mean has sd 1/sqrt(12))
    assert abs(np.mean(ips_errors)) < 3 / math.sqrt(len(seeds))


def test_the_logging_policy_estimates_its_observed_rate(tmp_path):
    _, lines, _, _ = synthetic_log(3, requests=300)
    feedback = load_feedback(write(tmp_path, lines))
    report = evaluate(feedback, {})
    observed = report["clicks"] / report["impressions"]
    for kind in ("ips", "snips", "dr"):
        assert report["policies"]["logging"]["ctr"][kind]["estimate"] == pytest.approx(observed)
    assert report["policies"]["logging"]["ctr"]["ess"] == pytest.approx(report["impressions"])


def test_outcomes_without_request_id_are_credited_within_the_window(tmp_path):
    _, with_ids, _, _ = synthetic_log(5, requests=200)
    _, without, _, _ = synthetic_log(5, requests=200, with_request_id=False)
    a = load_feedback(write(tmp_path, with_ids))
    b = join(read_events(write(tmp_path, without)), window_s=30.0)
    assert a.unattributed == b.unattributed == 0
    assert sum(int(s.clicks.sum()) for s in b.slates) == sum(int(s.clicks.sum())
                                                              for s in a.slates)
    c = join(read_events(write(tmp_path, without)), window_s=1.0)  # clicks come 5 s later
    assert c.unattributed > 0 and all(not s.clicks.any() for s in c.slates)


def test_a_deterministic_log_supports_only_its_own_ranking(tmp_path):
    sim, lines, _, _ = synthetic_log(2, requests=200, rate=0.0)
    feedback = load_feedback(write(tmp_path, lines))
    logged = Logged.of(feedback.slates)
    assert (logged.propensity == 1.0).all()
    report = evaluate(feedback, {"oracle": oracle_rankings(sim, feedback, logged)})
    assert report["explored_requests"] == 0
    assert report["policies"]["oracle"]["support"] == pytest.approx(
        report["policies"]["oracle"]["ctr"]["matched"])
    assert json.loads(json.dumps(report))  # JSON-ready
    assert report["cached_requests"] == 0


def test_the_report_counts_and_notes_cached_slates(tmp_path):
    from rankly.engine.feedback.offpolicy import render

    _, lines, _, _ = synthetic_log(4, requests=50)
    cached = [line.replace('"propensity"', '"cached": true, "propensity"', 1)
              if '"r4-1"' in line and '"impression"' in line else line for line in lines]
    report = evaluate(load_feedback(write(tmp_path, cached)), {})
    assert report["cached_requests"] == 1
    assert "1 slates were served from a cache" in render(report)


def test_history_before_keeps_the_log_order_of_events_at_one_timestamp():
    """Events of one timestamp reach the store in log order, and a recency-weighted history
    reads that order: the offline features must not re-sort them by item id."""
    from rankly.engine.events.values import Event

    events = [Event(f"e{i}", "u", item, "click", 100.0 if i else 50.0)
              for i, item in enumerate(["a", "z", "b", "m"])]
    events.append(Event("e9", "u", "q", "click", 200.0))
    feedback = join(events)
    assert [item for _, item, _ in feedback.history_before("u", 100.0)] == ["a"]
    assert [item for _, item, _ in feedback.history_before("u", 150.0)] == ["a", "z", "b", "m"]
    assert [item for _, item, _ in feedback.history_before("u", 201.0)][-1] == "q"


def test_the_cli_names_a_missing_event_log_and_a_bad_window(tmp_path, capsys):
    from rankly.engine import cli

    missing = tmp_path / "nothing.jsonl"
    assert cli.main(["off-policy", "--events", str(missing), "--artifacts", str(tmp_path)]) == 2
    assert f"rankly off-policy: {missing}: No such file or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["off-policy", "--events", str(missing), "--artifacts", str(tmp_path),
                  "--window", "-1"])
    assert exc.value.code == 2
    assert "argument --window: must be a finite number above 0" in capsys.readouterr().err
