"""Admin routes for experiments: read, create/replace, stop, and results."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import metrics
from ..http.auth import require_admin
from ..http.validation import (
    RequestError,
    check_id,
    check_no_surrogates,
    check_path_encoding,
    load_json,
    require_json,
)
from ..runtime import Runtime
from ..storage.store import StoreUnavailable
from . import (
    Experiment,
    ExperimentError,
    InvalidCounts,
    Status,
    analyze,
    json_safe,
    parse_experiment,
)
from .stats import srm_test

log = logging.getLogger("rankly.experiments")


def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.state.runtime
    require_admin(request, rt.settings)
    return rt


def _key(rt: Runtime, request: Request) -> str:
    raw = check_path_encoding(request.scope, "key", request.path_params["key"])
    return check_id(raw, "key", rt.settings.limits)


def _experiment(rt: Runtime, request: Request) -> Experiment:
    key = _key(rt, request)
    exp = rt.experiments.get(key)
    if exp is None:
        raise RequestError("key", f"no experiment {key!r}", status=404)
    return exp


def describe(exp: Experiment) -> dict[str, Any]:
    """The experiment as JSON (the same shape PUT accepts)."""
    return {
        "key": exp.key, "seed": exp.seed, "status": exp.status.value,
        "coverage": exp.coverage, "primary_metric": exp.primary_metric.value,
        "guardrails": [g.value for g in exp.guardrails], "mde": exp.mde,
        "mde_relative": exp.mde_relative, "phase": exp.phase, "sticky": exp.sticky,
        "holdout": exp.holdout, "bandit": exp.bandit, "epoch": exp.epoch,
        **({"layer": {"name": exp.layer.name, "range": [exp.layer.start, exp.layer.end]}}
           if exp.layer else {}),
        "variants": [
            {"name": v.name, "weight": v.weight,
             **{k: list(val) for k in ("scorers", "candidates", "rerankers")
                if (val := getattr(v.overrides, k)) is not None},
             **({"options": {n: dict(o) for n, o in v.overrides.options.items()}}
                if v.overrides.options else {})}
            for v in exp.variants
        ],
    }


def _json(body: Any, status: int = 200) -> Response:
    return JSONResponse(json_safe(body), status_code=status)


async def list_experiments(request: Request) -> Response:
    """``GET /experiments``: every experiment, in configuration order."""
    rt = _runtime(request)
    return _json({"experiments": [describe(e) for e in rt.experiments.experiments]})


async def experiment(request: Request) -> Response:
    """``GET`` or ``PUT /experiments/{key}``: one route, so 405 and OPTIONS name both
    methods in ``Allow`` (two routes answered ``Allow: GET, HEAD`` to a PUT's path, #18)."""
    if request.method == "PUT":
        return await put_experiment(request)
    return await get_experiment(request)


async def get_experiment(request: Request) -> Response:
    rt = _runtime(request)
    return _json(describe(_experiment(rt, request)))


#: ExperimentError messages of rules that relate fields to each other or to other
#: experiments, which a JSON schema cannot state: 409, not 422.
_CONFLICTS = ("duplicated variant", "weights must not all be 0", "layer.range",
              "overlaps", "a bandit allocates by a per-user metric")


async def put_experiment(request: Request) -> Response:
    rt = _runtime(request)
    key = _key(rt, request)
    if "%" in key:
        raise RequestError("key", "must not contain '%': clients that re-quote URLs would read "
                                  "a '%XX' in it as an escape and could not address the "
                                  "experiment", status=422)
    require_json(request.headers)
    body = load_json(await request.body())
    if not isinstance(body, dict):
        raise RequestError("body", "must be a JSON object", status=400)
    # NOTE: before anything is stored: a variant name with a lone surrogate was stored, then
    # every answer, metric scrape and listing that wrote it out failed with a 500
    check_no_surrogates(body)
    if body.get("key", key) != key:
        raise RequestError("key", "must match the key in the path", status=409)
    try:
        exp = parse_experiment({**body, "key": key})
        rt.check_experiment(exp)
        _check_option_types(exp, rt.registries)
        old = rt.experiments.get(key)
        if old is not None and "phase" not in body:
            exp = dataclasses.replace(exp, phase=_next_phase(old, exp))
        rt.experiments = rt.experiments.replace_experiment(exp)
    except ExperimentError as exc:
        message = str(exc)
        status = 409 if any(c in message for c in _CONFLICTS) else 422
        raise RequestError("body", message, status=status) from None
    except OverflowError:  # an integer literal too large for a float (math.isfinite)
        raise RequestError("body", "a number is out of range") from None
    if old is not None and old.phase != exp.phase:
        await retain(rt, old)  # the old phases' counts are read no more
    if exp.status is Status.STOPPED:
        await retain(rt, exp)
    return _json(describe(exp), status=200 if old is not None else 201)


def _next_phase(old: Experiment, new: Experiment) -> int:
    """The phase of ``new`` replacing ``old`` when the body names none: the stored phase, or
    the next one when users would land in other arms (other variants, another seed, other
    weights unless sticky; a bandit moves its weights itself), so exposures of two splits
    never mix in one phase's counts. The body's own settings are kept whole: a PUT that
    changed the weights lost every other change, and one that repeated the current
    definition sent the experiment back to phase 0 and its old split (#18)."""
    if [v.name for v in old.variants] != [v.name for v in new.variants]:
        return old.phase + 1
    if old.seed != new.seed or old.bandit != new.bandit:
        return old.phase + 1
    moved = any(abs(a - b) > 1e-12 for a, b in zip(old.weights, new.weights, strict=True))
    if moved and not new.bandit and not new.sticky:
        return old.phase + 1
    return old.phase


#: JSON types of declared option defaults, and the OpenAPI type that says them.
OPTION_TYPES: tuple[tuple[type, str, tuple[type, ...]], ...] = (
    (bool, "boolean", (bool,)), (int, "integer", (int,)), (float, "number", (int, float)),
    (str, "string", (str,)))


def option_type(default: Any) -> tuple[str, tuple[type, ...]] | None:
    """The OpenAPI type and the accepted JSON types of an option whose scalar default is
    ``default``; ``None`` when any value goes (no default, or another kind of default)."""
    for kind, name, accepted in OPTION_TYPES:
        if type(default) is kind:
            return name, accepted
    return None


def option_schema(default: Any) -> dict[str, Any]:
    """The OpenAPI schema of an option whose default is ``default``: its scalar type, or for
    a list default an array of its items' type (``{}`` when nothing can be said)."""
    typed = option_type(default)
    if typed is not None:
        return {"type": typed[0]}
    if isinstance(default, list | tuple) and default:
        items = {option_type(v) for v in default}
        if len(items) == 1 and None not in items:
            return {"type": "array", "items": {"type": items.pop()[0]}}
    return {}


def _fits(value: Any, schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind is None:
        return True
    if kind == "array":
        return isinstance(value, list) and all(_fits(v, schema["items"]) for v in value)
    accepted = next(a for _, name, a in OPTION_TYPES if name == kind)
    return isinstance(value, bool) is (accepted == (bool,)) and isinstance(value, accepted)


def _check_option_types(exp: Experiment, registries: Any) -> None:
    """In a JSON body an option's value must have its default's JSON type, as
    :func:`option_schema` says: the settings' parsing of strings (``"3"`` for an int,
    ``"25,50"`` for a list) is for environment variables (#18)."""
    from ..plugins import declared_options

    for i, variant in enumerate(exp.variants):
        for section, options in variant.overrides.options.items():
            declared = declared_options(section, registries) or {}
            for key, value in options.items():
                schema = option_schema(declared.get(key))
                if not _fits(value, schema):
                    kind = schema["type"] if schema["type"] != "array" else \
                        f"array of {schema['items']['type']}"
                    raise RequestError("body", f"variants[{i}].options.{section}.{key}: "
                                               f"must be a JSON {kind}")


async def stop_experiment(request: Request) -> Response:
    rt = _runtime(request)
    exp = dataclasses.replace(_experiment(rt, request), status=Status.STOPPED)
    rt.experiments = rt.experiments.replace_experiment(exp)
    await retain(rt, exp)
    return _json(describe(exp))


async def retain(rt: Runtime, exp: Experiment) -> None:
    """Start the retention countdown of ``exp``'s stored counts (``experiment_retention_days``);
    a store that is down only leaves them to the TTLs their last writes set."""
    try:
        await rt.tracker.retain(exp)
    except StoreUnavailable:
        log.warning("experiment %r: retention not applied: store unavailable", exp.key)


async def retain_stopped(rt: Runtime) -> None:
    """:func:`retain` every experiment configured as stopped (at start-up)."""
    for exp in rt.experiments.experiments:
        if exp.status is Status.STOPPED:
            await retain(rt, exp)


async def experiment_results(request: Request) -> Response:
    rt = _runtime(request)
    exp = _experiment(rt, request)
    try:
        counts = await rt.tracker.counts(exp)
        impressions = await rt.tracker.impression_counts(exp)
    except StoreUnavailable:
        return JSONResponse({"error": {"field": "store", "message": "counts unavailable"}},
                            status_code=503, headers={"Retry-After": "1"})
    try:
        result = analyze(
            counts, weights=exp.weights,
            primary_metric=exp.primary_metric.value,
            guardrails=[g.value for g in exp.guardrails], mde=exp.mde,
            mde_relative=exp.mde_relative, bandit=exp.bandit,
            bandit_weights=exp.weights if exp.bandit else None, impressions=impressions,
        )
    except (InvalidCounts, ValueError) as exc:
        raise RequestError("counts", str(exc)) from None
    return _json({"experiment": exp.key, "phase": exp.phase, "status": exp.status.value,
                  **result})


async def refresh_srm(rt: Runtime) -> None:
    """Export the SRM p-value of every running A/B experiment (bandits move their weights).

    The series of an experiment that stopped, became a bandit, or started a phase with no
    exposure yet is dropped: its last value would keep an alert on ``p < 0.001`` firing for
    an experiment nobody enters, or show the old split's p-value for the new one.
    """
    exported: set[str] = set()
    for exp in rt.experiments.running:
        if exp.bandit:
            continue
        try:
            counts = [a.exposures for a in await rt.tracker.counts(exp)]
        except StoreUnavailable:
            exported.add(exp.key)  # unknown: keep the last value
            continue
        if sum(counts):
            p = srm_test(counts, exp.weights)["p_value"]
            if p is not None:
                metrics.SRM_P_VALUE.labels(exp.key).set(p)
                exported.add(exp.key)
    for exp in rt.experiments.experiments:
        if exp.key not in exported:
            _drop_srm(exp.key)


def _drop_srm(key: str) -> None:
    if (key,) not in metrics.SRM_P_VALUE._metrics:
        return
    if metrics.multiprocess_dir() is None:
        metrics.SRM_P_VALUE.remove(key)
    else:
        # NOTE: prometheus-client cannot remove a series in multiprocess mode; NaN is what
        # the exposition format has for "no value", and no alert threshold matches it
        metrics.SRM_P_VALUE.labels(key).set(math.nan)


ROUTES = [
    Route("/experiments", list_experiments, methods=["GET"]),
    Route("/experiments/{key}", experiment, methods=["GET", "PUT"]),
    Route("/experiments/{key}/stop", stop_experiment, methods=["POST"]),
    Route("/experiments/{key}/results", experiment_results, methods=["GET"]),
]
