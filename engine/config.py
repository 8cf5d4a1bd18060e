"""Typed settings, built once at startup from a TOML file and ``RANKLY_*`` variables."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

ENV_PREFIX = "RANKLY_"
#: ``RANKLY_*`` variables that are not settings: the config file path, the kernel choice (read
#: at import by rankly._fast) and test/CI locations (datasets, screenshot artifacts).
PROCESS_VARIABLES = frozenset({"RANKLY_CONFIG", "RANKLY_PURE_PYTHON", "RANKLY_DATASETS",
                               "RANKLY_ARTIFACTS_DIR"})


class ConfigError(ValueError):
    """A setting is missing, misspelt or out of range; the message names it."""


class Secret:
    """A string that never shows itself in ``repr``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))


@dataclass(frozen=True)
class Limits:
    """Input limits; over-limit requests get 413/422 before any proportional work."""

    n_default: int = 10
    n_max: int = 100
    max_body_bytes: int = 1_048_576
    max_id_length: int = 256
    max_exclude: int = 1000
    max_categories: int = 50
    max_session_items: int = 200
    max_events_batch: int = 1000


@dataclass(frozen=True)
class RateLimits:
    """Per-client request rates (token buckets, see engine/serving/ratelimit.py); 0 means unlimited.

    A client is its ``X-API-Key``/``Authorization`` value (hashed) or else its address.
    ``*_burst`` is the bucket size (0: one second's worth, at least 1). The ``events_global_*``
    and ``events_max_inflight`` settings are not per client: they cap a worker's ingestion.
    """

    recommendations_per_second: float = 0.0  # GET/POST /recommendations, /items/{id}/similar
    recommendations_burst: int = 0
    events_per_second: float = 0.0  # POST /events, /track/click
    events_burst: int = 0
    max_clients: int = 100_000  # buckets kept per route group (least recently seen dropped)
    # Server-wide event admission, per worker process (engine/events/admission.py),
    # on by default: over it, POST /events and /track/click answer 429 + Retry-After.
    # 2,000 events/s is what benchmarks/events_load.py sustained with 0 errors on one worker,
    # 2 shared cores and the fsynced file log (benchmarks/README.md, "Events under load").
    events_global_per_second: float = 2000.0  # events (not requests); 0: unlimited
    events_global_burst: int = 0  # 0: one second's worth, at least limits.max_events_batch
    events_max_inflight: int = 64  # ingest requests at once; 0: no cap


@dataclass(frozen=True)
class PipelineSettings:
    """Which components run, in which order (names as registered by plugins)."""

    # the setup `rankly train` produces (see docs/evaluation.md for how it was chosen)
    candidates: tuple[str, ...] = ("blend", "popular")
    scorers: tuple[str, ...] = ("blend", "ease", "popular")
    rerankers: tuple[str, ...] = ("diversity",)
    candidates_per_generator: int = 300
    rerank_depth: int = 5  # rerankers see n * rerank_depth items (at least 50)
    exclude_seen: bool = True
    similar: tuple[str, ...] = ("itemknn", "popular")  # serves /items/{id}/similar
    fallback: str = "popular"  # scorer whose catalog-wide scores answer cold starts and failures
    # components that may fail to build at start: served without (and /ready names them);
    # any other configured component whose factory raises stops the server
    optional: tuple[str, ...] = ()
    # where the selection (candidates to rerankers) runs: "auto" on the event loop when every
    # component of the plan is one of rankly's own (bounded, compiled), else on a worker
    # thread whose deadline abandons a plugin that hangs; "always" / "never" force one
    inline_selection: str = "auto"


#: Where the selection runs (``pipeline.inline_selection``).
INLINE_MODES = ("auto", "always", "never")

#: What an invalidating event does to cached answers (``cache.invalidation``).
INVALIDATION_MODES = ("revalidate", "drop")


def check_invalidation(mode: str) -> str:
    """``mode`` if it is one of :data:`INVALIDATION_MODES`, else :class:`ConfigError`."""
    if mode not in INVALIDATION_MODES:
        raise ConfigError(f"cache.invalidation must be one of {', '.join(INVALIDATION_MODES)}, "
                          f"not {mode!r}")
    return mode


@dataclass(frozen=True)
class CacheSettings:
    tiers: tuple[str, ...] = ("l1",)
    ttl_seconds: float = 300.0
    jitter: float = 0.1
    l1_max_entries: int = 100_000
    l1_max_bytes: int = 64 * 1024 * 1024
    # early/stale refreshes computing at once per worker; more wait their turn while the
    # stale answer is served, so a mass expiry does not crowd the live misses (#9)
    max_background_refreshes: int = 2
    # What an invalidating event (a purchase, rating, add to cart) does to the user's
    # cached answers (L1 and L2): "revalidate" keeps them, marked; the next request is
    # served that answer minus the items the user has now seen (topped up from its spare
    # items) while the key recomputes in the background. "drop": the next request waits for
    # a fresh computation.
    invalidation: str = "revalidate"
    # ranked items kept beyond n with each cached answer, to top up a revalidated slate
    spare_items: int = 5


@dataclass(frozen=True)
class Deadlines:
    """Time budgets in milliseconds."""

    request_ms: float = 200.0
    stage_ms: float = 100.0
    store_ms: float = 30.0
    body_read_ms: float = 10_000.0  # a request body not all received by then: 408 (0: none)
    # past the grace, a body arriving slower than this many bytes per second on average: 408
    # (0: no minimum rate), so a trickling client frees its connection and ingest slot early
    body_min_rate: float = 240.0
    body_rate_grace_ms: float = 1_000.0


@dataclass(frozen=True)
class EventSettings:
    """The event log's layout on Redis (the embedded file log ignores it)."""

    # streams the log is split into, by a stable hash of the user id (docs/scaling.md)
    partitions: int = 16


@dataclass(frozen=True)
class ExplorationSettings:
    """Randomized slates for off-policy evaluation (feedback/exploration.py; off by default)."""

    # share of served slates whose first ``top_m`` items are shuffled uniformly at random;
    # every impression logs the exact probability of its item at its position
    rate: float = 0.0
    top_m: int = 10


@dataclass(frozen=True)
class ImpressionSettings:
    """What each impression logs besides its slate (feedback/served.py, docs/feedback-loop.md)."""

    # the items' ranker inputs as the pipeline had them when it computed the slate: pool rank
    # and score, popularity, live trending, the user's history length and category features
    features: bool = True
    # also each candidate generator's rank of the item (``sources``); off keeps lines shorter
    sources: bool = True


@dataclass(frozen=True)
class Settings:
    """Every setting of a rankly process; build with :func:`load_settings`."""

    artifacts: Path | None = None
    store_url: str = field(default="memory", repr=False)  # may carry a Redis password
    namespace: str = "rankly"
    data_dir: Path = Path(".rankly")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 0  # 0: one per core with a shared (Redis) store, 1 with the embedded one
    log_level: str = "info"
    access_log: bool = False
    admin_token: Secret | None = None
    load_entrypoints: bool = True
    blocked_plugins: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    rate_limits: RateLimits = field(default_factory=RateLimits)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    deadlines: Deadlines = field(default_factory=Deadlines)
    events: EventSettings = field(default_factory=EventSettings)
    exploration: ExplorationSettings = field(default_factory=ExplorationSettings)
    impressions: ImpressionSettings = field(default_factory=ImpressionSettings)
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    experiments: tuple[Mapping[str, Any], ...] = ()
    quality_window_minutes: float = 15.0  # rolling window of the quality gauges
    bandit_epoch_seconds: float = 3600.0  # bandits re-weight once per decision epoch
    # days an experiment's Redis counters are kept after it stops, or after their last write
    # while it runs (0: forever); experiments/tracking.py, docs/experiments.md
    experiment_retention_days: float = 90.0
    event_types: Mapping[str, float] = field(default_factory=dict)

    def plugin_options(self, name: str) -> Mapping[str, Any]:
        """Options of the component ``name`` (the ``[plugins.<name>]`` table)."""
        return dict(self.plugins.get(name, {}))

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    origin = get_origin(hint)
    args = get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a table, got {type(value).__name__}")
        return _build(hint, value, prefix=f"{name}.")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: expected a list")
        return tuple(value)
    if hint is Path or (args and Path in args):
        return None if value in (None, "") else Path(value)
    if hint is Secret or (args and Secret in args):
        return None if value in (None, "") else Secret(str(value))
    if hint is bool:
        if isinstance(value, str):
            low = value.lower()
            if low not in {"1", "0", "true", "false", "yes", "no"}:
                raise ConfigError(f"{name}: expected a boolean, got {value!r}")
            return low in {"1", "true", "yes"}
        return bool(value)
    if hint in (int, float):
        try:
            out = hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected {hint.__name__}, got {value!r}") from None
        return out
    if origin in (Mapping, dict) or hint is Mapping:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ConfigError(f"{name}: expected a JSON object") from None
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a table")
        return dict(value)
    return value if not isinstance(value, str) or hint is not str else str(value)


def _build(cls: type, raw: Mapping[str, Any], prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown setting {prefix}{unknown[0]}")
    kwargs = {k: _coerce(prefix + k, v, hints[k]) for k, v in raw.items()}
    return cls(**kwargs)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``RANKLY_PORT=9000`` -> {"port": ...}; ``RANKLY_CACHE__TTL_SECONDS`` -> nested."""
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key in PROCESS_VARIABLES:
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        node = out
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path[:depth + 1])}: given both as a value and "
                                  "as a table")
            node = child
        if isinstance(node.get(path[-1]), dict):
            raise ConfigError(f"{'.'.join(path)}: given both as a value and as a table")
        node[path[-1]] = value
    if "REDIS_URL" in environ and "store_url" not in out:
        out["store_url"] = environ["REDIS_URL"]
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


#: The highest TCP port (the ``port`` setting and ``--port`` must be in 1..MAX_PORT).
MAX_PORT = 65535


def _validate(s: Settings) -> Settings:
    lim = s.limits
    if not 1 <= lim.n_default <= lim.n_max:
        raise ConfigError("limits.n_default must be in 1..limits.n_max")
    for name in ("n_max", "max_body_bytes", "max_id_length", "max_events_batch"):
        if getattr(lim, name) < 1:
            raise ConfigError(f"limits.{name} must be >= 1")
    rl = s.rate_limits
    for name in ("events_global_per_second", "events_global_burst", "events_max_inflight"):
        if getattr(rl, name) < 0:
            raise ConfigError(f"rate_limits.{name} must be >= 0")
    if 0 < rl.events_global_burst < lim.max_events_batch:
        raise ConfigError("rate_limits.events_global_burst must be 0 or >= "
                          "limits.max_events_batch (a full batch could never be admitted)")
    if not 0 <= s.cache.jitter < 1:
        raise ConfigError("cache.jitter must be in [0, 1)")
    if s.cache.ttl_seconds <= 0:
        raise ConfigError("cache.ttl_seconds must be > 0")
    if s.cache.max_background_refreshes < 1:
        raise ConfigError("cache.max_background_refreshes must be >= 1")
    check_invalidation(s.cache.invalidation)
    if s.cache.spare_items < 0:
        raise ConfigError("cache.spare_items must be >= 0")
    if s.deadlines.request_ms <= 0 or s.deadlines.stage_ms <= 0:
        raise ConfigError("deadlines must be > 0")
    if not s.pipeline.scorers:
        raise ConfigError("pipeline.scorers must name at least one scorer")
    if s.pipeline.inline_selection not in INLINE_MODES:
        raise ConfigError(f"pipeline.inline_selection must be one of {', '.join(INLINE_MODES)}, "
                          f"not {s.pipeline.inline_selection!r}")
    if s.workers < 0:
        raise ConfigError("workers must be >= 0 (0: one per core with a Redis store)")
    if not 1 <= s.port <= MAX_PORT:
        raise ConfigError(f"port must be in 1..{MAX_PORT}, not {s.port}")
    if not 1 <= s.events.partitions <= 1024:
        raise ConfigError("events.partitions must be in 1..1024")
    if not 0 <= s.experiment_retention_days < 1e6:
        raise ConfigError("experiment_retention_days must be in [0, 1e6) (0: keep forever)")
    if not 0 <= s.exploration.rate <= 1 or s.exploration.top_m < 2:
        raise ConfigError("exploration.rate must be in [0, 1] and exploration.top_m >= 2")
    return s


def load_settings(
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build validated settings: defaults < TOML file < environment < explicit overrides.

    The file is ``config_file`` or ``$RANKLY_CONFIG``. Raises :class:`ConfigError` naming the
    offending setting.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    path = config_file or environ.get("RANKLY_CONFIG")
    if path:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        if "experiments" in raw and isinstance(raw["experiments"], Mapping):
            raw["experiments"] = [dict(v, key=k) for k, v in raw["experiments"].items()]
    raw = _merge(raw, _env_overrides(environ))
    raw = _merge(raw, {k: v for k, v in overrides.items() if v is not None})
    return _validate(_build(Settings, raw))


# --- command-line values: argparse types (argparse names the option on error) ----------------


def _number_type(cast: Callable[[str], Any], ok: Callable[[Any], bool], requirement: str,
                 doc: str) -> Callable[[str], Any]:
    """An argparse type: ``cast(text)``, refused unless ``ok(value)``; argparse prefixes its
    message with the option (``argument --n: must be at least 1, got 0``)."""
    noun = "an integer" if cast is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__doc__ = doc
    return parse


positive_int = _number_type(int, lambda v: v >= 1, "at least 1", "An integer of at least 1.")
non_negative_int = _number_type(int, lambda v: v >= 0, "at least 0",
                                "An integer of at least 0.")
port_number = _number_type(int, lambda v: 1 <= v <= MAX_PORT, f"in 1..{MAX_PORT}",
                           "A TCP port (the ``port`` setting's range).")
positive_float = _number_type(float, lambda v: math.isfinite(v) and v > 0,
                              "a finite number above 0", "A finite number above 0.")
open_fraction = _number_type(float, lambda v: 0.0 < v < 1.0, "strictly between 0 and 1",
                             "A share strictly between 0 and 1.")
