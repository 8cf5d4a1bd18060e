"""Assignment: GrowthBook SDK test cases, an independent reference hash, 10^6-id chi-square."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from scipy import stats

from rankly.engine.experiments.assignment import (
    Experiment,
    ExperimentError,
    Status,
    Variant,
    assign,
    assign_one,
    assign_user,
    bucket_ranges,
    choose_variation,
    equal_weights,
    fnv1a32,
    gb_hash,
    in_namespace,
    load_experiments,
    parse_experiment,
)

# From growthbook/growthbook packages/sdk-js/test/cases.json: [seed, value, version, expected].
GB_HASH_CASES = [
    ("", "a", 1, 0.22),
    ("", "b", 1, 0.077),
    ("b", "a", 1, 0.946),
    ("ef", "d", 1, 0.652),
    ("asdf", "8952klfjas09ujk", 1, 0.549),
    ("", "123", 1, 0.011),
    ("", '___)((*":&', 1, 0.563),
    ("seed", "a", 2, 0.0505),
    ("seed", "b", 2, 0.2696),
    ("foo", "ab", 2, 0.2575),
    ("foo", "def", 2, 0.2019),
    ("89123klj", "8952klfjas09ujkasdf", 2, 0.124),
    ("90850943850283058242805", "123", 2, 0.7516),
    ("()**(%$##$%#$#", '___)((*":&', 2, 0.0128),
    ("abc", "def", 99, None),
]

# cases.json "getBucketRange": (numVariations, coverage, weights) -> ranges.
GB_BUCKET_RANGE_CASES = [
    ("normal 50/50", 2, 1, None, [(0, 0.5), (0.5, 1)]),
    ("reduced coverage", 2, 0.5, None, [(0, 0.25), (0.5, 0.75)]),
    ("zero coverage", 2, 0, None, [(0, 0), (0.5, 0.5)]),
    ("4 variations", 4, 1, None, [(0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1)]),
    ("uneven weights", 2, 1, [0.4, 0.6], [(0, 0.4), (0.4, 1)]),
    ("uneven weights, 3 variations", 3, 1, [0.2, 0.3, 0.5], [(0, 0.2), (0.2, 0.5), (0.5, 1)]),
    (
        "uneven weights, reduced coverage, 3 variations",
        3,
        0.2,
        [0.2, 0.3, 0.5],
        [(0, 0.04), (0.2, 0.26), (0.5, 0.6)],
    ),
    ("negative coverage", 2, -0.2, None, [(0, 0), (0.5, 0.5)]),
    ("coverage above 1", 2, 1.5, None, [(0, 0.5), (0.5, 1)]),
    ("weights sum below 1", 2, 1, [0.4, 0.1], [(0, 0.5), (0.5, 1)]),
    ("weights sum above 1", 2, 1, [0.7, 0.6], [(0, 0.5), (0.5, 1)]),
    (
        "weights.length not equal to num variations",
        4,
        1,
        [0.4, 0.4, 0.2],
        [(0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1)],
    ),
    ("weights sum almost equals 1", 2, 1, [0.4, 0.5999], [(0, 0.4), (0.4, 0.9999)]),
]

_EVEN = [(0, 0.5), (0.5, 1)]
_REDUCED = [(0, 0.25), (0.5, 0.75)]
# cases.json "chooseVariation": (n, ranges) -> index.
GB_CHOOSE_CASES = [
    ("even range, 0.2", 0.2, _EVEN, 0),
    ("even range, 0.4", 0.4, _EVEN, 0),
    ("even range, 0.6", 0.6, _EVEN, 1),
    ("even range, 0.8", 0.8, _EVEN, 1),
    ("even range, 0", 0, _EVEN, 0),
    ("even range, 0.5", 0.5, _EVEN, 1),
    ("reduced range, 0.2", 0.2, _REDUCED, 0),
    ("reduced range, 0.4", 0.4, _REDUCED, -1),
    ("reduced range, 0.6", 0.6, _REDUCED, 1),
    ("reduced range, 0.8", 0.8, _REDUCED, -1),
    ("reduced range, 0.25", 0.25, _REDUCED, -1),
    ("reduced range, 0.5", 0.5, _REDUCED, 1),
    ("zero range", 0.5, [(0, 0.5), (0.5, 0.5), (0.5, 1)], 2),
]

# cases.json "inNamespace": user, (namespace, start, end) -> bool (hash v1 of "__" + id).
GB_NAMESPACE_CASES = [
    ("1", ("namespace1", 0, 0.4), False),
    ("1", ("namespace1", 0.4, 1), True),
    ("1", ("namespace2", 0, 0.4), False),
    ("1", ("namespace2", 0.4, 1), True),
    ("2", ("namespace1", 0, 0.4), False),
    ("2", ("namespace1", 0.4, 1), True),
    ("2", ("namespace2", 0, 0.4), False),
    ("2", ("namespace2", 0.4, 1), True),
    ("3", ("namespace1", 0, 0.4), False),
    ("3", ("namespace1", 0.4, 1), True),
    ("3", ("namespace2", 0, 0.4), True),
    ("3", ("namespace2", 0.4, 1), False),
    ("4", ("namespace1", 0, 0.4), False),
    ("4", ("namespace1", 0.4, 1), True),
    ("4", ("namespace2", 0, 0.4), True),
    ("4", ("namespace2", 0.4, 1), False),
]

# cases.json "feature": buckets reported in experimentResult (seed = feature key "feature").
GB_FEATURE_BUCKETS = [
    ("feature", "123", 1, 0.863),
    ("feature", "456", 1, 0.178),
    ("feature", "fds", 1, 0.514),
    ("feature", "123", 2, 0.5231),
]


def js_fnv1a32(s: str) -> int:
    """FNV-1a as the JS SDK writes it: int32 shifts and adds, ``>>> 0`` at the end."""

    def to_int32(x: int) -> int:
        x &= 0xFFFFFFFF
        return x - (1 << 32) if x & 0x80000000 else x

    units = struct.unpack(
        f"<{len(s.encode('utf-16-le', 'surrogatepass')) // 2}H",
        s.encode("utf-16-le", "surrogatepass"),
    )
    hval = to_int32(0x811C9DC5)
    for code in units:
        hval = to_int32(hval ^ code)
        hval = to_int32(
            hval
            + to_int32(hval << 1)
            + to_int32(hval << 4)
            + to_int32(hval << 7)
            + to_int32(hval << 8)
            + to_int32(hval << 24)
        )
    return hval & 0xFFFFFFFF


def js_hash(seed: str, value: str, version: int) -> float | None:
    if version == 2:
        return (js_fnv1a32(str(js_fnv1a32(seed + value))) % 10000) / 10000
    if version == 1:
        return (js_fnv1a32(value + seed) % 1000) / 1000
    return None


@pytest.mark.parametrize(("seed", "value", "version", "expected"), GB_HASH_CASES)
def test_hash_matches_growthbook_cases(seed, value, version, expected):
    assert gb_hash(seed, value, version) == expected


@pytest.mark.parametrize(("seed", "value", "version", "expected"), GB_FEATURE_BUCKETS)
def test_hash_matches_growthbook_feature_buckets(seed, value, version, expected):
    assert gb_hash(seed, value, version) == expected


@pytest.mark.parametrize(("name", "n", "coverage", "weights", "expected"), GB_BUCKET_RANGE_CASES)
def test_bucket_ranges_match_growthbook_cases(name, n, coverage, weights, expected):
    got = bucket_ranges(n, coverage, weights)
    assert len(got) == len(expected)
    for (s, e), (xs, xe) in zip(got, expected, strict=True):
        assert s == pytest.approx(xs, abs=1e-12) and e == pytest.approx(xe, abs=1e-12)


@pytest.mark.parametrize(("name", "n", "ranges", "expected"), GB_CHOOSE_CASES)
def test_choose_variation_matches_growthbook_cases(name, n, ranges, expected):
    assert choose_variation(n, ranges) == expected


@pytest.mark.parametrize(("user", "namespace", "expected"), GB_NAMESPACE_CASES)
def test_in_namespace_matches_growthbook_cases(user, namespace, expected):
    assert in_namespace(user, namespace) is expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [(-1, ()), (0, ()), (1, (1.0,)), (2, (0.5, 0.5)), (3, (1 / 3,) * 3), (4, (0.25,) * 4)],
)
def test_equal_weights_match_growthbook_cases(n, expected):
    assert equal_weights(n) == pytest.approx(expected)


def test_fnv_matches_js_reference_on_random_unicode():
    rng = random.Random(6)
    alphabet = "abcXYZ019-_:é中文😀𝄞\u0000\uffff"
    for _ in range(2000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        assert fnv1a32(s) == js_fnv1a32(s)
        for version in (1, 2):
            assert gb_hash("seed-" + s[:3], s, version) == js_hash("seed-" + s[:3], s, version)


def test_fnv_counts_astral_characters_as_two_utf16_units():
    # U+1F600 is the surrogate pair D83D DE00 in UTF-16, as JS charCodeAt sees it.
    h = 0x811C9DC5
    for unit in (0xD83D, 0xDE00):
        h = ((h ^ unit) * 0x01000193) & 0xFFFFFFFF
    assert fnv1a32("😀") == h


# --- vectorised hash for 10^6 ids (a second, numpy implementation) ---------------------------

_PRIME = np.uint64(0x01000193)
_M32 = np.uint64(0xFFFFFFFF)


def _np_fnv(codes: np.ndarray, lengths: np.ndarray, start: int | np.ndarray) -> np.ndarray:
    h = np.broadcast_to(np.uint64(start), lengths.shape).astype(np.uint64)
    for j in range(codes.shape[1]):
        live = lengths > j
        nxt = ((h ^ codes[:, j].astype(np.uint64)) * _PRIME) & _M32
        h = np.where(live, nxt, h)
    return h


def _np_hash_v2(seed: str, ids: np.ndarray) -> np.ndarray:
    width = ids.dtype.itemsize // 4
    codes = np.frombuffer(ids.tobytes(), dtype=np.uint32).reshape(len(ids), width)
    lengths = np.char.str_len(ids)
    prefix = fnv1a32(seed) if seed else 0x811C9DC5
    h1 = _np_fnv(codes, lengths, np.uint64(prefix))
    digits = np.char.str_len(h1.astype(str))
    dcodes = np.zeros((len(ids), 10), dtype=np.uint32)
    for k in range(10):
        power = np.uint64(10) ** np.clip(digits - 1 - k, 0, None).astype(np.uint64)
        dcodes[:, k] = 48 + (h1 // power) % np.uint64(10)
    h2 = _np_fnv(dcodes, digits, np.uint64(0x811C9DC5))
    return (h2 % np.uint64(10000)).astype(np.float64) / 10000


@pytest.fixture(scope="module")
def million_ids() -> np.ndarray:
    return np.char.add("user-", np.arange(1_000_000).astype(str))


def test_numpy_hash_agrees_with_scalar_hash(million_ids):
    sample = million_ids[::9973]
    got = _np_hash_v2("exp-a", sample)
    assert got.tolist() == [gb_hash("exp-a", str(u)) for u in sample]


def test_hash_v2_is_uniform_on_a_million_ids(million_ids):
    h = _np_hash_v2("exp-a", million_ids)
    counts = np.bincount((h * 100).astype(int), minlength=100)
    assert stats.chisquare(counts).pvalue > 0.001


def test_hashes_with_seeds_one_character_apart_are_independent(million_ids):
    a = _np_hash_v2("exp-a", million_ids)
    b = _np_hash_v2("exp-b", million_ids)
    table = np.histogram2d(a, b, bins=10, range=[[0, 1], [0, 1]])[0]
    assert stats.chi2_contingency(table, correction=False).pvalue > 0.001
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.005


def test_variant_split_of_a_million_ids_follows_weights(million_ids):
    h = _np_hash_v2("exp-split", million_ids)
    ranges = bucket_ranges(3, 1.0, [0.2, 0.3, 0.5])
    counts = np.array([np.sum((h >= s) & (h < e)) for s, e in ranges])
    assert counts.sum() == len(million_ids)
    assert stats.chisquare(counts, f_exp=np.array([0.2, 0.3, 0.5]) * 1e6).pvalue > 0.001


# --- definitions, parsing, assignment -----------------------------------------------------------


def _raw(**kw):
    base = {
        "key": "new-scorer",
        "status": "running",
        "variants": [
            {"name": "control"},
            {"name": "ease", "scorers": ["ease"], "options": {"blend": {"alpha": 0.3}}},
        ],
    }
    base.update(kw)
    return base


def test_seed_defaults_to_key_and_phase_extends_it():
    e = parse_experiment(_raw())
    assert e.seed == "new-scorer" and e.hash_seed == "new-scorer"
    assert parse_experiment(_raw(phase=2)).hash_seed == "new-scorer:2"
    assert parse_experiment(_raw(seed="s")).hash_seed == "s"


def test_assignment_matches_growthbook_choose_variation():
    e = parse_experiment(
        _raw(variants=[{"name": "a", "weight": 0.1}, {"name": "b", "weight": 0.9}], seed="feature")
    )
    a = assign_one(e, "123")  # cases.json "creates experiments properly": bucket 0.5231 -> v1
    assert a is not None and a.variant_name == "b" and a.probability == pytest.approx(0.9)


def test_overrides_are_parsed_and_frozen():
    e = parse_experiment(_raw())
    o = e.variants[1].overrides
    assert o.scorers == ("ease",) and o.candidates is None and o.options["blend"]["alpha"] == 0.3
    assert e.variants[0].overrides.is_empty
    with pytest.raises(TypeError):
        o.options["blend"]["alpha"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"key": ""}, "key"),
        ({"coverage": 1.5}, "coverage"),
        ({"status": "paused"}, "status"),
        ({"primary_metric": "revenue"}, "primary_metric"),
        ({"guardrails": ["latency"]}, "guardrails[0]"),
        ({"mde": 0}, "mde"),
        ({"holdout": 1.0}, "holdout"),
        ({"phase": -1}, "phase"),
        ({"sticky": "yes"}, "sticky"),
        ({"variants": [{"name": "only"}]}, "variants"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "variants[1].name"),
        ({"variants": [{"name": "a"}, {"name": "b", "weight": -1}]}, "variants[1].weight"),
        ({"variants": [{"name": "a"}, {"name": "b", "scorers": "ease"}]}, "variants[1].scorers"),
        ({"variants": [{"name": "a"}, {"name": "b", "colour": 1}]}, "variants[1].colour"),
        ({"layer": {"name": "l", "range": [0.5, 0.2]}}, "layer.range"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_parse_errors_name_the_field(change, field):
    with pytest.raises(ExperimentError, match=r"new-scorer|experiments\[0\]") as info:
        load_experiments([_raw(**change)])
    assert field in str(info.value)


def test_weights_are_normalised():
    e = parse_experiment(_raw(variants=[{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]))
    assert e.weights == (0.25, 0.75)


def test_duplicate_keys_are_rejected():
    with pytest.raises(ExperimentError, match="duplicated"):
        load_experiments([_raw(), _raw()])


def test_lower_coverage_never_moves_a_user_to_another_variant():
    full = parse_experiment(_raw())
    part = parse_experiment(_raw(coverage=0.3))
    inside = 0
    for i in range(5000):
        a, b = assign_one(full, f"u{i}"), assign_one(part, f"u{i}")
        assert a is not None
        if b is not None:
            inside += 1
            assert b.variant_name == a.variant_name
    assert 0.27 < inside / 5000 < 0.33


def test_weight_change_starts_a_new_phase_unless_sticky():
    e = parse_experiment(_raw())
    moved = e.with_weights([0.2, 0.8])
    assert moved.phase == 1 and moved.hash_seed == "new-scorer:1" and moved.weights == (0.2, 0.8)
    assert e.with_weights([1, 1]).phase == 0  # same split: same phase
    sticky = parse_experiment(_raw(sticky=True)).with_weights([0.2, 0.8])
    assert sticky.phase == 0 and sticky.hash_seed == "new-scorer"


def test_new_phase_reassigns_users_independently():
    e = parse_experiment(_raw())
    f = e.with_weights([0.5, 0.5 + 1e-9])
    same = sum(
        assign_one(e, f"u{i}").variant_name == assign_one(f, f"u{i}").variant_name  # type: ignore[union-attr]
        for i in range(4000)
    )
    assert 0.46 < same / 4000 < 0.54


def test_holdout_users_get_no_variant():
    e = parse_experiment(_raw(holdout=0.1))
    out = [assign_one(e, f"u{i}") for i in range(5000)]
    held = [a for a in out if a is not None and a.in_holdout]
    assert 0.08 < len(held) / 5000 < 0.12
    assert all(a.variant is None and a.overrides.is_empty and a.probability == 0.1 for a in held)


def test_layer_experiments_are_mutually_exclusive():
    reg = load_experiments(
        [
            _raw(key="a", layer={"name": "ranking", "range": [0, 0.5]}),
            _raw(key="b", layer={"name": "ranking", "range": [0.5, 1]}),
        ]
    )
    counts = {"a": 0, "b": 0}
    for i in range(4000):
        got = assign(reg, f"u{i}")
        assert len(got) == 1
        counts[got[0].experiment.key] += 1
    assert 0.45 < counts["a"] / 4000 < 0.55


def test_overlapping_layer_ranges_are_rejected():
    with pytest.raises(ExperimentError, match="overlaps"):
        load_experiments(
            [
                _raw(key="a", layer={"name": "ranking", "range": [0, 0.6]}),
                _raw(key="b", layer={"name": "ranking", "range": [0.5, 1]}),
            ]
        )


def test_assign_user_picks_the_first_running_experiment():
    reg = load_experiments([_raw(key="draft", status="draft"), _raw(key="a"), _raw(key="b")])
    got = assign_user(reg, "u1")
    assert got is not None and got.experiment.key == "a" and got.phase == 0
    assert assign_user(reg, None) is None and assign_user(reg, "") is None
    assert [a.experiment.key for a in assign(reg, "u1")] == ["a", "b"]


def test_stopped_experiments_assign_nobody():
    reg = load_experiments([_raw(status="stopped")])
    assert assign_user(reg, "u1") is None


def test_replace_experiment_keeps_position():
    reg = load_experiments([_raw(key="a"), _raw(key="b")])
    new = reg.get("a").with_weights([0.1, 0.9])  # type: ignore[union-attr]
    reg2 = reg.replace_experiment(new)
    assert [e.key for e in reg2] == ["a", "b"] and reg2.get("a").phase == 1  # type: ignore[union-attr]


def test_experiment_dataclass_is_frozen():
    e = Experiment("k", (Variant("a", 0.5), Variant("b", 0.5)), status=Status.RUNNING)
    with pytest.raises(AttributeError):
        e.key = "x"  # type: ignore[misc]
