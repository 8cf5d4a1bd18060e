"""``rankly replay`` (recompute projections from the event log) and ``rankly export-events``
(the log as the events CSV that ``rankly train --format events-csv`` reads)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import errno
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ..config import Settings, load_settings
from ..model import Catalog, load_model
from ..offline.datasets import DEFAULT_EVENT_WEIGHTS, EVENT_COLUMNS
from ..storage.opening import open_store
from ..storage.store import StoreUnavailable
from .log import EventLog, open_event_log
from .projections import Projections
from .values import Event


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="settings file (store_url, data_dir)")
    parser.add_argument("--artifacts", default=None,
                        help="model artifacts (item categories); default: settings.artifacts")


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``rankly replay``."""
    _common(parser)
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``rankly export-events``."""
    _common(parser)
    parser.add_argument("--out", required=True, help="CSV file to write ('-' for stdout)")
    parser.add_argument("--include-impressions", action="store_true",
                        help="also export impression events (not training signal)")
    parser.add_argument("--format", choices=("csv", "jsonl"), default="csv",
                        help="csv: the events CSV of rankly train (default); jsonl: the log's "
                             "own lines with request_id and context (positions, propensities, "
                             "the serve-time ranker features), for rankly off-policy and "
                             "rankly train-ranker")


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    if args.artifacts:
        settings = settings.replace(artifacts=Path(args.artifacts))
    return settings


def _catalog(settings: Settings) -> Catalog | None:
    return None if settings.artifacts is None else load_model(settings.artifacts).catalog


async def replay(settings: Settings) -> dict:
    """Rebuild the projections of ``settings``' store from its event log; return the counts."""
    store = open_store(settings)
    event_log = open_event_log(settings, store, readonly=True)
    try:
        await event_log.open()
        catalog = _catalog(settings)
        proj = Projections(settings, store, lambda: catalog, count_users=True)
        stats = await proj.rebuild(event_log)
        top = sorted(proj.popularity.snapshot(proj.popularity.latest).items(),
                     key=lambda kv: -kv[1])[:5]
        return {**stats.as_dict(), "store": store.kind, "log": event_log.kind,
                "top_items": [[k, round(v, 3)] for k, v in top]}
    finally:
        await event_log.close()
        await store.close()


def export_row(event: Event, catalog: Catalog | None) -> list[str]:
    """One CSV row in :data:`EVENT_COLUMNS` order (value only for ratings)."""
    category = ""
    if catalog is not None:
        idx = catalog.index.get(event.item_id)
        if idx is not None and catalog.categories[idx] >= 0:
            category = catalog.category_names[catalog.categories[idx]]
    # repr: the shortest text that reads back as the same float (":g" kept six digits)
    value = "" if event.type != "rating" or event.value is None \
        else repr(event.value).removesuffix(".0")
    return [event.user_id, event.item_id, category, event.type, value,
            str(int(event.timestamp))]


async def export(settings: Settings, out: IO[str], include_impressions: bool = False,
                 fmt: str = "csv") -> dict:
    """Write the log as events CSV (header + one row per event, log order), or with
    ``fmt="jsonl"`` as the log's own JSON lines (every field kept); return counts."""
    store = open_store(settings)
    event_log: EventLog = open_event_log(settings, store, readonly=True)
    counts: dict[str, int] = {}
    try:
        await event_log.open()
        catalog = _catalog(settings)
        writer = csv.writer(out, lineterminator="\n")
        # NOTE: an id with surrounding whitespace is quoted: the events CSV loader strips an
        # unquoted field's leading spaces, and every reader takes a quoted field as it is
        quoting = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
        if fmt == "csv":
            writer.writerow(EVENT_COLUMNS)
        async for event in event_log.replay():
            if event.type == "impression" and not include_impressions:
                continue
            if fmt == "jsonl":
                out.write(json.dumps(event.to_json(), ensure_ascii=False) + "\n")
            else:
                row = export_row(event, catalog)
                (quoting if any(f != f.strip() for f in row) else writer).writerow(row)
            counts[event.type] = counts.get(event.type, 0) + 1
    finally:
        await event_log.close()
        await store.close()
    return counts


def _unavailable(command: str, exc: StoreUnavailable) -> int:
    print(f"rankly {command}: event log unavailable: {exc}", file=sys.stderr)
    return 1


def run_replay(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    try:
        stats = asyncio.run(replay(_settings(args)))
    except StoreUnavailable as exc:
        return _unavailable("replay", exc)
    if args.json:
        print(json.dumps(stats), file=out)
        return 0
    print(f"replayed {stats['events']} events from the {stats['log']} log into the "
          f"{stats['store']} store: {stats['users']} users, {stats['unknown_items']} events "
          f"on unknown items, {stats['store_errors']} store errors", file=out)
    for kind, n in stats["by_type"].items():
        print(f"  {kind:<14} {n}", file=out)
    return 0


@contextlib.contextmanager
def _replaced_on_success(path: Path) -> Iterator[IO[str]]:
    """A file beside ``path`` that becomes ``path`` only when the block ends without an
    exception: a failed export leaves the last good one (or nothing), never a part of the
    log that ``rankly train`` would take for all of it. Anything but a regular file (a pipe,
    ``/dev/stdout``) is written as it is; a symbolic link's target is replaced."""
    if path.exists() and not path.is_file():
        with open(path, "w", encoding="utf-8", newline="") as fh:
            yield fh
        return
    path = path.resolve() if path.is_symlink() else path
    if not path.parent.is_dir():  # named as given, not as the file beside it
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(part, "w", encoding="utf-8", newline="") as fh:
            yield fh
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def run_export(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    settings = _settings(args)
    fmt = getattr(args, "format", "csv")  # callers that build the Namespace predate --format
    try:
        if args.out == "-":
            counts = asyncio.run(export(settings, out, args.include_impressions, fmt))
        else:
            with _replaced_on_success(Path(args.out)) as fh:
                counts = asyncio.run(export(settings, fh, args.include_impressions, fmt))
    except StoreUnavailable as exc:
        return _unavailable("export-events", exc)
    total = sum(counts.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"exported {total} events ({detail or 'none'}) to {args.out}", file=sys.stderr)
    custom = sorted(set(counts) - set(DEFAULT_EVENT_WEIGHTS) - {"rating", "impression"})
    if custom:
        weights = ",".join(f"{k}={settings.event_types.get(k, 1.0):g}" for k in custom)
        print(f"custom event types: train with --event-weights {weights}", file=sys.stderr)
    return 0
