"""Experiment definitions and deterministic, GrowthBook-compatible user assignment."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from ..types import FORBIDDEN_IN_IDS

FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193
_MASK32 = 0xFFFFFFFF
_EMPTY: Mapping[str, Mapping[str, Any]] = MappingProxyType({})


class ExperimentError(ValueError):
    """An experiment definition is invalid; the message names the experiment and the field."""


# --- GrowthBook hashing -------------------------------------------------------------------------


def fnv1a32(text: str) -> int:
    """Return the 32-bit FNV-1a hash of ``text`` taken over its UTF-16 code units.

    This is what JavaScript's ``charCodeAt`` loop in the GrowthBook SDKs hashes: characters
    outside the BMP count as two surrogate units, so ids hash the same in every SDK.
    """
    h = FNV_OFFSET
    if text.isascii():
        for unit in text.encode("ascii"):
            h = ((h ^ unit) * FNV_PRIME) & _MASK32
        return h
    data = text.encode("utf-16-le", "surrogatepass")
    for i in range(0, len(data), 2):
        h = ((h ^ (data[i] | (data[i + 1] << 8))) * FNV_PRIME) & _MASK32
    return h


def gb_hash(seed: str, value: str, version: int = 2) -> float | None:
    """Return GrowthBook's ``hash(seed, value, version)``: a number in [0, 1), or None.

    Version 2: ``fnv1a32(str(fnv1a32(seed + value))) % 10000 / 10000`` (hashing twice removes
    the correlation between seeds that differ in one character). Version 1:
    ``fnv1a32(value + seed) % 1000 / 1000``. Any other version returns None, like the SDKs.
    """
    if version == 2:
        return (fnv1a32(str(fnv1a32(seed + value))) % 10000) / 10000
    if version == 1:
        return (fnv1a32(value + seed) % 1000) / 1000
    return None


def equal_weights(n: int) -> tuple[float, ...]:
    """Return ``n`` weights of ``1/n`` (empty for ``n <= 0``), as GrowthBook's getEqualWeights."""
    return tuple(1.0 / n for _ in range(n)) if n > 0 else ()


def bucket_ranges(
    n: int, coverage: float = 1.0, weights: Sequence[float] | None = None
) -> tuple[tuple[float, float], ...]:
    """Return one ``[start, end)`` range per variation, as GrowthBook's getBucketRanges.

    Range starts are the cumulative weights, whatever the coverage, so lowering coverage only
    drops users and never moves one to another variation. Coverage is clamped to [0, 1];
    weights of the wrong length or summing outside [0.99, 1.01] fall back to equal weights.
    """
    coverage = min(max(coverage, 0.0), 1.0)
    w: Sequence[float] = weights if weights is not None else equal_weights(n)
    if len(w) != n or not 0.99 <= sum(w) <= 1.01:
        w = equal_weights(n)
    out = []
    cumulative = 0.0
    for weight in w:
        start = cumulative
        cumulative += weight
        out.append((start, start + coverage * weight))
    return tuple(out)


def choose_variation(n: float, ranges: Sequence[tuple[float, float]]) -> int:
    """Return the index of the first range holding ``n`` (``start <= n < end``), or -1."""
    for i, (start, end) in enumerate(ranges):
        if start <= n < end:
            return i
    return -1


def in_namespace(user_id: str, namespace: tuple[str, float, float]) -> bool:
    """Return whether ``user_id`` falls in a GrowthBook namespace ``(id, start, end)`` (hash v1)."""
    n = gb_hash("__" + namespace[0], user_id, 1)
    assert n is not None
    return namespace[1] <= n < namespace[2]


# --- definitions --------------------------------------------------------------------------------


class Status(enum.StrEnum):
    DRAFT = "draft"
    RUNNING = "running"
    STOPPED = "stopped"


class Metric(enum.StrEnum):
    """What an experiment judges by: per exposed user (``ctr``: users who clicked a served
    item, ``conversion``: users who bought one) or per impression (clicks and purchases
    per served item, with a user-clustered variance: experiments/stats.py)."""

    CTR = "ctr"
    CONVERSION = "conversion"
    IMPRESSION_CTR = "impression_ctr"
    IMPRESSION_CONVERSION = "impression_conversion"


@dataclass(frozen=True, slots=True)
class Overrides:
    """How a variant changes the pipeline. ``None`` keeps the configured list of that stage.

    ``options`` maps a plugin name to options merged over that plugin's configured options.
    """

    scorers: tuple[str, ...] | None = None
    candidates: tuple[str, ...] | None = None
    rerankers: tuple[str, ...] | None = None
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _EMPTY)

    @property
    def is_empty(self) -> bool:
        return (
            self.scorers is None
            and self.candidates is None
            and self.rerankers is None
            and not self.options
        )


NO_OVERRIDES = Overrides()


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    weight: float  # normalised: the weights of an experiment sum to 1
    overrides: Overrides = NO_OVERRIDES


@dataclass(frozen=True, slots=True)
class Layer:
    """Experiments sharing a layer name get disjoint ``[start, end)`` slices of one layer hash."""

    name: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Experiment:
    """One experiment. The first variant is the control.

    ``hash_seed`` is ``seed`` in phase 0 and ``f"{seed}:{phase}"`` afterwards, so a new phase
    re-randomises users. Bandit experiments also mix the decision ``epoch`` into the seed.
    """

    key: str
    variants: tuple[Variant, ...]
    seed: str = ""
    coverage: float = 1.0
    status: Status = Status.DRAFT
    primary_metric: Metric = Metric.CONVERSION
    guardrails: tuple[Metric, ...] = ()
    mde: float | None = None
    mde_relative: bool = True
    phase: int = 0
    sticky: bool = False
    holdout: float = 0.0
    layer: Layer | None = None
    bandit: bool = False
    epoch: int = 0
    # Derived once at construction so that assignment does no string building per request.
    hash_seed: str = field(init=False, repr=False, compare=False)
    ranges: tuple[tuple[float, float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        seed = self.seed or self.key
        object.__setattr__(self, "seed", seed)
        hash_seed = seed if self.phase == 0 else f"{seed}:{self.phase}"
        if self.bandit:
            hash_seed = f"{hash_seed}:e{self.epoch}"
        object.__setattr__(self, "hash_seed", hash_seed)
        weights = tuple(v.weight for v in self.variants)
        object.__setattr__(
            self, "ranges", bucket_ranges(len(self.variants), self.coverage, weights)
        )

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(v.weight for v in self.variants)

    @property
    def control(self) -> Variant:
        return self.variants[0]

    def with_weights(self, weights: Sequence[float], *, epoch: int | None = None) -> Experiment:
        """Return a copy with new variant weights (normalised).

        A/B experiments start a new phase (a new seed, so everyone is re-randomised and the
        old exposures are not mixed with the new split) unless ``sticky`` is set. Bandit
        experiments keep their phase and move to ``epoch`` instead.
        """
        normalised = _normalise(weights, self.key)
        if len(normalised) != len(self.variants):
            raise ExperimentError(
                f"experiment {self.key!r}: weights: expected {len(self.variants)} values"
            )
        variants = tuple(
            replace(v, weight=w) for v, w in zip(self.variants, normalised, strict=True)
        )
        if self.bandit:
            return replace(self, variants=variants, epoch=self.epoch if epoch is None else epoch)
        changed = any(abs(a - b) > 1e-12 for a, b in zip(normalised, self.weights, strict=True))
        phase = self.phase + 1 if changed and not self.sticky else self.phase
        return replace(self, variants=variants, phase=phase)


@dataclass(frozen=True, slots=True)
class Assignment:
    """Which variant of which experiment a user gets.

    ``variant`` is None only for users in the experiment's holdout, who get the default
    pipeline. ``probability`` is the share of the experiment's traffic that lands in this
    variant (the holdout share for holdout users; the bandit weight of the current epoch for
    bandit experiments): use ``1 / probability`` for inverse-propensity weighting.
    """

    experiment: Experiment
    variant: Variant | None
    phase: int
    probability: float
    in_holdout: bool = False

    @property
    def variant_name(self) -> str | None:
        return None if self.variant is None else self.variant.name

    @property
    def overrides(self) -> Overrides:
        return NO_OVERRIDES if self.variant is None else self.variant.overrides


@dataclass(frozen=True, slots=True)
class Experiments:
    """The loaded experiments, in priority order (config order), with lookup by key."""

    experiments: tuple[Experiment, ...] = ()
    by_key: Mapping[str, Experiment] = field(init=False, repr=False, compare=False)
    running: tuple[Experiment, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_key", MappingProxyType({e.key: e for e in self.experiments}))
        object.__setattr__(
            self,
            "running",
            tuple(e for e in self.experiments if e.status is Status.RUNNING),
        )

    def __len__(self) -> int:
        return len(self.experiments)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.experiments)

    def __contains__(self, key: object) -> bool:
        return key in self.by_key

    def get(self, key: str) -> Experiment | None:
        return self.by_key.get(key)

    def replace_experiment(self, experiment: Experiment) -> Experiments:
        """Return a registry with ``experiment`` added or swapped in (keeping its position)."""
        items = list(self.experiments)
        for i, e in enumerate(items):
            if e.key == experiment.key:
                items[i] = experiment
                break
        else:
            items.append(experiment)
        _check_layers(items)
        return Experiments(tuple(items))


# --- assignment -----------------------------------------------------------------------------


def assign_one(experiment: Experiment, user_id: str) -> Assignment | None:
    """Assign ``user_id`` in one experiment, ignoring its status; None if the user is outside.

    Order: layer slice, then holdout, then coverage and variant from the bucket ranges. Each
    step uses its own hash seed, so the steps are independent of each other.
    """
    layer = experiment.layer
    if layer is not None:
        n = gb_hash("__" + layer.name, user_id, 2)
        if not layer.start <= n < layer.end:  # type: ignore[operator]
            return None
    if experiment.holdout > 0.0:
        h = gb_hash(experiment.seed + ":holdout", user_id, 2)
        if h < experiment.holdout:  # type: ignore[operator]
            return Assignment(experiment, None, experiment.phase, experiment.holdout, True)
    n = gb_hash(experiment.hash_seed, user_id, 2)
    i = choose_variation(n, experiment.ranges)  # type: ignore[arg-type]
    if i < 0:
        return None
    variant = experiment.variants[i]
    return Assignment(experiment, variant, experiment.phase, variant.weight)


def assign(experiments: Experiments | Iterable[Experiment], user_id: str) -> list[Assignment]:
    """Return the user's assignment in every running experiment they fall into, in order.

    O(number of running experiments), three hashes each at most.
    """
    pool = experiments.running if isinstance(experiments, Experiments) else experiments
    out = []
    for experiment in pool:
        if experiment.status is not Status.RUNNING:
            continue
        a = assign_one(experiment, user_id)
        if a is not None:
            out.append(a)
    return out


def assign_user(registry: Experiments, user_id: str | None) -> Assignment | None:
    """Return the one assignment that shapes this request's pipeline, or None.

    The first running experiment (config order) that takes the user wins. Because every
    experiment hashes with its own seed, losing users to an earlier experiment removes them
    independently of their variant in the later one, so its comparison stays unbiased; use a
    layer to make experiments exclusive by design. Anonymous requests (no id) are never
    assigned.
    """
    if not user_id:
        return None
    for experiment in registry.running:
        a = assign_one(experiment, user_id)
        if a is not None:
            return a
    return None


# --- parsing --------------------------------------------------------------------------------

#: The longest variant or layer name: names become Prometheus label values and parts of
#: Redis keys, so they are bounded and hold no control characters, as ids do.
MAX_NAME_LENGTH = 128
#: The largest ``phase`` or ``epoch``: a 32-bit signed integer, exact in every JSON reader.
MAX_COUNTER = 2**31 - 1

_EXPERIMENT_FIELDS = frozenset(
    {
        "key",
        "seed",
        "variants",
        "coverage",
        "status",
        "primary_metric",
        "guardrails",
        "mde",
        "mde_relative",
        "phase",
        "sticky",
        "holdout",
        "layer",
        "bandit",
        "epoch",
    }
)
_VARIANT_FIELDS = frozenset({"name", "weight", "scorers", "candidates", "rerankers", "options"})


def load_experiments(raw: Sequence[Mapping[str, Any]]) -> Experiments:
    """Parse and validate experiment definitions (e.g. the ``[[experiments]]`` config tables).

    Raises ExperimentError naming the experiment and the field at the first problem.
    """
    if isinstance(raw, Mapping) or isinstance(raw, str | bytes):
        raise ExperimentError("experiments: expected a list of tables")
    items = [parse_experiment(item, index=i) for i, item in enumerate(raw)]
    seen: set[str] = set()
    for e in items:
        if e.key in seen:
            raise ExperimentError(f"experiment {e.key!r}: key: duplicated")
        seen.add(e.key)
    _check_layers(items)
    return Experiments(tuple(items))


def parse_experiment(raw: Mapping[str, Any], *, index: int | None = None) -> Experiment:
    """Parse one experiment definition; see load_experiments."""
    where = f"experiments[{index}]" if index is not None else "experiment"
    if not isinstance(raw, Mapping):
        raise ExperimentError(f"{where}: expected a table")
    key = raw.get("key")
    if not isinstance(key, str) or not key.strip():
        raise ExperimentError(f"{where}: key: required non-empty string")
    where = f"experiment {key!r}"
    unknown = sorted(set(raw) - _EXPERIMENT_FIELDS)
    if unknown:
        raise ExperimentError(f"{where}: {unknown[0]}: unknown field")

    seed = raw.get("seed", key)
    if not isinstance(seed, str) or not seed:
        raise ExperimentError(f"{where}: seed: expected a non-empty string")
    coverage = _number(raw.get("coverage", 1.0), where, "coverage", 0.0, 1.0)
    holdout = _number(raw.get("holdout", 0.0), where, "holdout", 0.0, 1.0, hi_open=True)
    status = _enum(Status, raw.get("status", "draft"), where, "status")
    metric = _enum(Metric, raw.get("primary_metric", "conversion"), where, "primary_metric")
    guardrails_raw = raw.get("guardrails", ())
    if isinstance(guardrails_raw, str) or not isinstance(guardrails_raw, Sequence):
        raise ExperimentError(f"{where}: guardrails: expected a list of metric names")
    guardrails = tuple(
        _enum(Metric, g, where, f"guardrails[{i}]") for i, g in enumerate(guardrails_raw)
    )
    mde_raw = raw.get("mde")
    mde = None if mde_raw is None else _number(mde_raw, where, "mde", 0.0, math.inf, lo_open=True)
    mde_relative = _bool(raw.get("mde_relative", True), where, "mde_relative")
    phase = _int(raw.get("phase", 0), where, "phase")
    epoch = _int(raw.get("epoch", 0), where, "epoch")
    sticky = _bool(raw.get("sticky", False), where, "sticky")
    bandit = _bool(raw.get("bandit", False), where, "bandit")
    layer = _layer(raw.get("layer"), where)
    if bandit and metric in (Metric.IMPRESSION_CTR, Metric.IMPRESSION_CONVERSION):
        raise ExperimentError(f"{where}: primary_metric: a bandit allocates by a per-user "
                              f"metric (ctr or conversion), got {metric.value!r}")

    variants_raw = raw.get("variants")
    if isinstance(variants_raw, str | bytes | Mapping) or not isinstance(variants_raw, Sequence):
        raise ExperimentError(f"{where}: variants: expected a list of at least 2 tables")
    if len(variants_raw) < 2:
        raise ExperimentError(f"{where}: variants: expected at least 2 (control first)")
    names: list[str] = []
    weights: list[float] = []
    overrides: list[Overrides] = []
    for i, v in enumerate(variants_raw):
        vwhere = f"{where}: variants[{i}]"
        if not isinstance(v, Mapping):
            raise ExperimentError(f"{vwhere}: expected a table")
        unknown = sorted(set(v) - _VARIANT_FIELDS)
        if unknown:
            raise ExperimentError(f"{vwhere}.{unknown[0]}: unknown field")
        name = _name(v.get("name"), f"{vwhere}.name")
        if name in names:
            raise ExperimentError(f"{vwhere}.name: duplicated variant {name!r}")
        names.append(name)
        weights.append(_number(v.get("weight", 1.0), vwhere, "weight", 0.0, math.inf, sep="."))
        overrides.append(_overrides(v, vwhere))
    if not any(w > 0 for w in weights):
        raise ExperimentError(f"{where}: variants: weights must not all be 0")
    variants = tuple(Variant(n, w, o) for n, w, o in zip(
        names, weight_shares(weights), overrides, strict=True))
    return Experiment(
        key=key,
        variants=variants,
        seed=seed,
        coverage=coverage,
        status=status,
        primary_metric=metric,
        guardrails=tuple(g for g in guardrails if g is not metric),
        mde=mde,
        mde_relative=mde_relative,
        phase=phase,
        sticky=sticky,
        holdout=holdout,
        layer=layer,
        bandit=bandit,
        epoch=epoch,
    )


def _check_layers(items: Sequence[Experiment]) -> None:
    """Reject overlapping slices of one layer among experiments that are not stopped."""
    by_layer: dict[str, list[Experiment]] = {}
    for e in items:
        if e.layer is not None and e.status is not Status.STOPPED:
            by_layer.setdefault(e.layer.name, []).append(e)
    for name, members in by_layer.items():
        members.sort(key=lambda e: e.layer.start)  # type: ignore[union-attr]
        for a, b in zip(members, members[1:], strict=False):
            if b.layer.start < a.layer.end:  # type: ignore[union-attr]
                raise ExperimentError(
                    f"experiment {b.key!r}: layer: range overlaps experiment {a.key!r}"
                    f" in layer {name!r}"
                )


def _layer(raw: Any, where: str) -> Layer | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ExperimentError(f"{where}: layer: expected a table with name and range")
    name = _name(raw.get("name"), f"{where}: layer.name")
    rng = raw.get("range")
    if (
        isinstance(rng, str)
        or not isinstance(rng, Sequence)
        or len(rng) != 2
        or not all(_is_number(x) for x in rng)
        or not 0.0 <= rng[0] < rng[1] <= 1.0
    ):
        raise ExperimentError(f"{where}: layer.range: expected [start, end] with 0<=start<end<=1")
    return Layer(name, float(rng[0]), float(rng[1]))


def _overrides(v: Mapping[str, Any], where: str) -> Overrides:
    lists: dict[str, tuple[str, ...] | None] = {}
    for stage in ("scorers", "candidates", "rerankers"):
        value = v.get(stage)
        if value is None:
            lists[stage] = None
            continue
        if (
            isinstance(value, str)
            or not isinstance(value, Sequence)
            or not all(isinstance(x, str) and x for x in value)
        ):
            raise ExperimentError(f"{where}.{stage}: expected a list of component names")
        lists[stage] = tuple(value)
    options = v.get("options", {})
    if not isinstance(options, Mapping) or not all(
        isinstance(k, str) and isinstance(o, Mapping) for k, o in options.items()
    ):
        raise ExperimentError(f"{where}.options: expected a table of tables (plugin -> options)")
    frozen = MappingProxyType({k: MappingProxyType(dict(o)) for k, o in options.items()})
    return Overrides(options=frozen, **lists)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _number(
    x: Any,
    where: str,
    name: str,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    sep: str = ": ",
) -> float:
    ok = _is_number(x)
    if ok:
        ok = (x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi)
    if not ok:
        lo_b = "(" if lo_open else "["
        hi_b = ")" if hi_open else "]"
        raise ExperimentError(f"{where}{sep}{name}: expected a number in {lo_b}{lo}, {hi}{hi_b}")
    return float(x)


def _int(x: Any, where: str, name: str) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x <= MAX_COUNTER:
        raise ExperimentError(f"{where}: {name}: expected an integer from 0 to {MAX_COUNTER}")
    return x


def _name(x: Any, where: str) -> str:
    """A variant or layer name: 1..MAX_NAME_LENGTH characters, no control character."""
    if not isinstance(x, str) or not x:
        raise ExperimentError(f"{where}: required non-empty string")
    if len(x) > MAX_NAME_LENGTH:
        raise ExperimentError(f"{where}: at most {MAX_NAME_LENGTH} characters")
    if FORBIDDEN_IN_IDS.search(x):
        raise ExperimentError(f"{where}: must not contain control characters or lone "
                              f"surrogates")
    return x


def _bool(x: Any, where: str, name: str) -> bool:
    if not isinstance(x, bool):
        raise ExperimentError(f"{where}: {name}: expected true or false")
    return x


def _enum(cls: type[enum.StrEnum], x: Any, where: str, name: str) -> Any:
    try:
        return cls(x)
    except ValueError:
        choices = "|".join(m.value for m in cls)
        raise ExperimentError(f"{where}: {name}: expected one of {choices}, got {x!r}") from None


def weight_shares(weights: Sequence[float]) -> tuple[float, ...]:
    """Return ``weights`` as shares summing to 1 (finite, non-negative, not all 0).

    Scaled by the largest weight before summing, so weights whose sum overflows a float
    (two of ``1e308``) keep their proportions instead of all becoming 0. Raises ValueError
    for weights that are negative, not finite or all 0.
    """
    if not all(_is_number(w) and w >= 0 for w in weights) or not any(w > 0 for w in weights):
        raise ValueError("weights: expected finite non-negative numbers, not all 0")
    top = float(max(weights))
    scaled = [float(w) / top for w in weights]
    total = math.fsum(scaled)
    return tuple(w / total for w in scaled)


def _normalise(weights: Sequence[float], key: str) -> tuple[float, ...]:
    try:
        return weight_shares(weights)
    except ValueError:
        raise ExperimentError(f"experiment {key!r}: weights: expected non-negative "
                              "numbers") from None
