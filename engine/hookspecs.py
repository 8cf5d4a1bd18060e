"""Every hook the engine calls: the one plugin contract.

All hooks here are *contribution* hooks: a plugin hands named components to the host through the
``register`` callback, and configuration (never plugin load order) decides which components run,
in which order and with which options. Hooks are called once per model load (at startup and on
every hot swap), never per request; the components they register do the per-request work.

Component protocols (what a factory must build), the value types and the model read API are
in :mod:`rankly.engine.api`, the only engine module a plugin imports: ``CandidateGenerator``,
``Scorer``, ``Reranker``, ``Cache`` and ``Trainer``. ``register(name, factory, options=...)``
may declare the option keys a component accepts (see ``rankly.engine.api.Register``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import hookspec

if TYPE_CHECKING:
    from .types import Register


# --- training (offline) ---------------------------------------------------------------------


@hookspec
def register_trainers(register: Register) -> None:
    """Contribute model trainers used by ``rankly train`` and ``rankly evaluate``.

    Arguments:
        register: call ``register(name, trainer)`` once per trainer; ``trainer`` follows the
            ``Trainer`` protocol (``fit(data, options) -> ModelPart``).

    Return: nothing (``None``). All implementations are called; names must be unique across
    plugins, a duplicate name fails at startup.

    Example::

        @hookimpl
        def register_trainers(register):
            register("pop", PopularityTrainer())
    """


# --- serving, in pipeline order -------------------------------------------------------------


@hookspec
def register_caches(register: Register) -> None:
    """Contribute ranking caches (tiers) consulted before any work is done.

    Arguments:
        register: call ``register(name, factory)``; ``factory(ctx: ComponentContext) -> Cache``.

    Return: nothing. Settings ``cache.tiers`` (e.g. ``["l1", "l2"]``) pick the tiers and their
    lookup order; a tier not listed is never built.

    Example::

        @hookimpl
        def register_caches(register):
            register("l1", lambda ctx: LocalCache(**ctx.options))
    """


@hookspec
def register_candidate_generators(register: Register) -> None:
    """Contribute candidate generators (recall stage).

    Arguments:
        register: call ``register(name, factory)``;
            ``factory(ctx: ComponentContext) -> CandidateGenerator | None``. A factory returns
            ``None`` when the loaded model has nothing for it (e.g. no ALS factors trained).

    Return: nothing. Settings ``pipeline.candidates`` pick generators; their candidates are
    merged in that order, the first generator to propose an item gives it its reason.

    Example::

        @hookimpl
        def register_candidate_generators(register):
            register("popular", PopularCandidates.from_context)
    """


@hookspec
def register_scorers(register: Register) -> None:
    """Contribute scorers (ranking stage).

    Arguments:
        register: call ``register(name, factory)``;
            ``factory(ctx: ComponentContext) -> Scorer | None``.

    Return: nothing. Settings ``pipeline.scorers`` is an ordered fallback chain: the first scorer
    whose output is valid (right length, finite) is used; a scorer that raises, times out or
    returns garbage is skipped and the response's ``fallback`` field says so.

    Example::

        @hookimpl
        def register_scorers(register):
            register("my-scorer", lambda ctx: MyScorer(ctx.model, **ctx.options))
    """


@hookspec
def register_rerankers(register: Register) -> None:
    """Contribute rerankers (post-ranking stage: diversity caps, boosts, business rules).

    Arguments:
        register: call ``register(name, factory)``;
            ``factory(ctx: ComponentContext) -> Reranker | None``.

    Return: nothing. Settings ``pipeline.rerankers`` applies them in order, each on the previous
    one's output.

    Example::

        @hookimpl
        def register_rerankers(register):
            register("diversity", lambda ctx: DiversityReranker(ctx.model, **ctx.options))
    """
