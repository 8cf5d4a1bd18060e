"""Interaction-data loaders (MovieLens 100K/latest, events CSV, Taobao) and verified downloads.

Every loader returns a :class:`Dataset`: the interactions, optional item metadata and a
:class:`LoadReport` that counts malformed rows (with the first 10 line numbers). A file whose
rows are mostly malformed raises :class:`DatasetError` instead of loading a sliver of it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import math
import sys
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from ..types import FORBIDDEN_IN_IDS
from . import progress as progress_bars
from .interactions import Interactions, ItemTable

FORMATS = ("auto", "movielens-100k", "movielens-csv", "events-csv", "taobao")

#: Implicit-feedback weight per event type; a ``rating`` event weighs its value.
DEFAULT_EVENT_WEIGHTS: Mapping[str, float] = {
    "view": 1.0, "click": 1.0, "fav": 2.0, "add_to_cart": 3.0, "purchase": 5.0,
}
#: Synonyms folded onto the canonical event names above.
EVENT_ALIASES: Mapping[str, str] = {
    "pv": "view", "page_view": "view", "cart": "add_to_cart", "addtocart": "add_to_cart",
    "buy": "purchase", "transaction": "purchase", "favorite": "fav", "like": "fav",
}
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
MAX_BAD_SHARE = 0.5
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
MAX_REPORTED = 10


@dataclass(frozen=True)
class Download:
    """A publisher archive: where to get it, its pinned sha256, the folder inside it."""

    url: str
    sha256: str
    member_dir: str


#: sha256 of the publisher zips, as pinned by TensorFlow Datasets' url_checksums/movielens.txt.
DOWNLOADS: Mapping[str, Download] = {
    "movielens-100k": Download(
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", "ml-100k"),
    "movielens-latest-small": Download(
        "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
        "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436", "ml-latest-small"),
}


class DatasetError(ValueError):
    """A data file is unreadable, of an unknown format, or mostly malformed."""


@dataclass
class LoadReport:
    """What a loader read: row counts and the first malformed lines (1-based line numbers)."""

    path: str
    format: str
    rows: int = 0
    loaded: int = 0
    malformed: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)

    def bad(self, line_no: int, reason: str) -> None:
        self.malformed += 1
        if len(self.bad_lines) < MAX_REPORTED:
            self.bad_lines.append((line_no, reason))

    def check(self) -> None:
        """Raise :class:`DatasetError` if nothing loaded or more than half the rows are bad."""
        if self.rows and self.malformed / self.rows > MAX_BAD_SHARE:
            raise DatasetError(
                f"{self.path}: {self.malformed} of {self.rows} rows are malformed "
                f"(is --format {self.format} right?); first: {self._first()}"
            )
        if not self.loaded:
            raise DatasetError(f"{self.path}: no interactions found")

    def _first(self) -> str:
        return "; ".join(f"line {n}: {why}" for n, why in self.bad_lines)

    def summary(self) -> str:
        text = f"{self.path} ({self.format}): {self.loaded} of {self.rows} rows loaded"
        if self.malformed:
            text += f", {self.malformed} malformed skipped ({self._first()})"
        return text


@dataclass(frozen=True)
class Dataset:
    """Loaded interactions, optional item metadata and the load reports."""

    interactions: Interactions
    items: ItemTable | None
    reports: tuple[LoadReport, ...]
    format: str


class _Columns:
    """Row accumulator turned into an :class:`Interactions` at the end."""

    def __init__(self) -> None:
        self.users: list[str] = []
        self.items: list[str] = []
        self.weights: list[float] = []
        self.ts: list[int] = []
        self.events: list[str] = []
        self.cats: list[str] = []

    def add(self, user: str, item: str, weight: float, ts: int, event: str = "",
            cat: str = "") -> None:
        self.users.append(user)
        self.items.append(item)
        self.weights.append(weight)
        self.ts.append(ts)
        self.events.append(event)
        self.cats.append(cat)

    def build(self, with_events: bool, with_cats: bool) -> Interactions:
        return Interactions(
            user_ids=np.array(self.users, dtype=str),
            item_ids=np.array(self.items, dtype=str),
            weights=np.array(self.weights, dtype=np.float32),
            timestamps=np.array(self.ts, dtype=np.int64),
            event_types=np.array(self.events, dtype=str) if with_events else None,
            categories=np.array(self.cats, dtype=str) if with_cats else None,
        )


def _open_text(path: Path, encoding: str = "utf-8") -> IO[str]:
    try:
        return open(path, encoding=encoding, newline="")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from None


def _rows(fh: IO[str], delimiter: str, strip: bool = True) -> Iterator[tuple[int, list[str]]]:
    """Yield (1-based line number, fields) for every non-blank line.

    ``strip``: fields without their surrounding whitespace; otherwise as written, but for
    the spaces between a delimiter and an unquoted field (``a, b``)."""
    reader = csv.reader(fh, delimiter=delimiter, skipinitialspace=not strip)
    try:
        for fields in reader:
            if fields and any(f.strip() for f in fields):
                yield reader.line_num, [f.strip() for f in fields] if strip else fields
    except (UnicodeDecodeError, csv.Error) as exc:  # not text, or a field over the csv limit
        where = f"after line {reader.line_num}" if reader.line_num else "from its first line"
        raise DatasetError(f"{getattr(fh, 'name', 'input')}: unreadable {where}: {exc}"
                           ) from None


def _int(text: str) -> int:
    # Timestamps sometimes come as "1512205511.0"; anything non-integral is malformed, and so
    # is anything outside int64 ("1e999" is inf, which int() refuses with OverflowError).
    value = float(text) if "." in text or "e" in text.lower() else int(text)
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
        raise ValueError(f"{text[:20]!r} is not an integer timestamp")
    if not _INT64_MIN <= value <= _INT64_MAX:  # compared as int: a float() of it may overflow
        raise ValueError(f"{text[:20]!r} is outside the int64 range")
    return int(value)


#: An events CSV's Unix times at or above these magnitudes are read as nanoseconds,
#: microseconds and milliseconds: as seconds they would lie past the year 5000, and each unit
#: reaches its bound from early 1973 on (JavaScript, Kafka and most event logs count in ms).
_TIME_UNITS = ((10**17, 10**9), (10**14, 10**6), (10**11, 10**3))


def _event_time(text: str) -> int:
    """An events CSV timestamp in Unix seconds: Unix time in seconds (fractions dropped),
    milliseconds, microseconds or nanoseconds (:data:`_TIME_UNITS`), or ISO 8601 (a date or
    a date and time; UTC unless it names an offset)."""
    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            return _iso_time(text)
        if not math.isfinite(value):
            raise ValueError(f"{text[:20]!r} is not a timestamp") from None
    if not _INT64_MIN <= value <= _INT64_MAX:  # as given: a count of ns fits in int64 too
        raise ValueError(f"{text[:20]!r} is outside the int64 range")
    for limit, per_second in _TIME_UNITS:
        if abs(value) >= limit:
            value = value // per_second if isinstance(value, int) else value / per_second
            break
    return math.floor(value)


def _iso_time(text: str) -> int:
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a timestamp (Unix time or ISO 8601, e.g. "
                         f"2024-05-01T12:30:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp())


def _weight_value(text: str) -> float:
    """An interaction's weight: a finite number >= 0 (a negative one is malformed: ALS's
    confidences and the popularity counts have no use for it)."""
    value = float(text)
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(text)
    return value


# --- MovieLens 100K -----------------------------------------------------------------------


def load_movielens_100k(path: str | Path, items: str | Path | None = None) -> Dataset:
    """Load ``u.data`` (tab-separated user, item, rating, unix ts) and ``u.item`` if present.

    ``items`` defaults to ``u.item`` next to ``u.data``. Weights are the ratings. Each item's
    categories are its set genre flags in u.genre order, so the primary one is the first set.
    """
    path = Path(path)
    bulk = _bulk_ratings(path, "movielens-100k", "latin-1", None, extra_fields=False,
                         header=False)
    if bulk is not None:
        report, cols = bulk
    else:
        with _open_text(path, "latin-1") as fh:
            rows = ((n, line.split()) for n, line in enumerate(fh, 1) if line.strip())
            report, cols = _load_ratings(rows, LoadReport(str(path), "movielens-100k"),
                                         extra_fields=False)
    return _with_items(path, items, "u.item", load_movielens_100k_items, report, cols,
                       "movielens-100k")


#: the longest id the bulk reader takes (longer ones go row by row)
_BULK_ID_CHARS = 64


class _BulkColumns:
    """Columns parsed in bulk: what :class:`_Columns` builds, already as arrays."""

    def __init__(self, users: np.ndarray, items: np.ndarray, weights: np.ndarray,
                 ts: np.ndarray) -> None:
        self.arrays = (users, items, weights, ts)

    def build(self, with_events: bool, with_cats: bool) -> Interactions:
        users, items, weights, ts = self.arrays
        return Interactions(user_ids=users, item_ids=items,
                            weights=weights.astype(np.float32), timestamps=ts)


def _bulk_ratings(path: Path, fmt: str, encoding: str, sep: str | None, extra_fields: bool,
                  header: bool) -> tuple[LoadReport, _Columns | _BulkColumns] | None:
    """Rating rows ``user, item, rating, unix ts`` parsed in bulk by NumPy's C reader, or None
    when any row is not plainly well formed (then the row-by-row loader reads the file and
    reports each malformed row with its line number).

    Accepts only what the row-by-row loader accepts alike: exactly four fields (at least four
    with ``extra_fields``), non-empty ids, finite ratings and integer timestamps in int64;
    ``sep`` None splits on whitespace, "," reads unquoted CSV. ``header``: a first row whose
    first field is ``userId``/``user_id`` is skipped.
    """
    try:
        text = path.read_text(encoding)
    except (OSError, UnicodeDecodeError):
        return None
    if sep is not None and '"' in text:
        return None  # quoted CSV fields: the csv module's job
    first = text.lstrip().split("\n", 1)[0]
    skip = int(header and first.split(sep)[0].strip().lower() in ("userid", "user_id"))
    dtype = np.dtype([("user", f"U{_BULK_ID_CHARS}"), ("item", f"U{_BULK_ID_CHARS}"),
                      ("weight", "f8"), ("ts", "i8")])
    try:
        with warnings.catch_warnings():
            # a file of blank lines: handled below (no rows), not worth a warning
            warnings.filterwarnings("ignore", "loadtxt: input contained no data", UserWarning)
            table = np.loadtxt(io.StringIO(text), dtype=dtype, delimiter=sep, comments=None,
                               skiprows=skip, usecols=(0, 1, 2, 3) if extra_fields else None,
                               ndmin=1)
    except (ValueError, OverflowError):
        return None
    if not table.size or not (np.isfinite(table["weight"]) & (table["weight"] >= 0)).all():
        return None  # the row reader reports the bad weights line by line
    ids = []
    for name in ("user", "item"):
        column = np.char.strip(table[name]) if sep is not None else table[name]
        width = np.char.str_len(column)
        # an id filling the field may have been cut: the row-by-row loader keeps it whole
        if (width == 0).any() or (width >= _BULK_ID_CHARS).any():
            return None
        ids.append(column.astype(f"U{int(width.max())}"))
    report = LoadReport(str(path), fmt)
    report.rows = report.loaded = int(table.size)
    report.check()
    return report, _BulkColumns(ids[0], ids[1], table["weight"], table["ts"].copy())


def _load_ratings(rows: Iterable[tuple[int, list[str]]], report: LoadReport,
                  extra_fields: bool) -> tuple[LoadReport, _Columns]:
    """Rating rows ``user, item, rating, unix ts`` into columns (``extra_fields``: more than
    four fields are allowed and ignored)."""
    cols = _Columns()
    for line_no, f in rows:
        report.rows += 1
        try:
            if (len(f) < 4 or (len(f) > 4 and not extra_fields)) or not f[0] or not f[1]:
                raise ValueError(f"expected 4 fields, got {len(f)}")
            cols.add(f[0], f[1], _weight_value(f[2]), _int(f[3]))
        except ValueError as exc:
            report.bad(line_no, str(exc) or "bad value")
            continue
        report.loaded += 1
    report.check()
    return report, cols


def _with_items(path: Path, items: str | Path | None, default_name: str,
                load_items: Callable[[Path], tuple[ItemTable, LoadReport]],
                report: LoadReport, cols: _Columns | _BulkColumns, fmt: str) -> Dataset:
    """The dataset, with the item file ``items`` (or ``default_name`` next to ``path``)."""
    item_path = Path(items) if items else path.with_name(default_name)
    table, reports = None, [report]
    if items or item_path.exists():
        table, item_report = load_items(item_path)
        reports.append(item_report)
    return Dataset(cols.build(False, False), table, tuple(reports), fmt)


def load_movielens_100k_items(path: str | Path) -> tuple[ItemTable, LoadReport]:
    """Parse ``u.item`` (latin-1, ``|``-separated, 19 genre flags at the end)."""
    path = Path(path)
    report = LoadReport(str(path), "movielens-100k items")
    ids, titles, cats = [], [], []
    with _open_text(path, "latin-1") as fh:
        for line_no, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            report.rows += 1
            f = line.split("|")
            flags = f[-len(ML100K_GENRES):]
            if len(f) < 2 + len(ML100K_GENRES) or any(x not in ("0", "1") for x in flags):
                report.bad(line_no, "expected id|title|...|19 genre flags")
                continue
            ids.append(f[0])
            titles.append(f[1])
            cats.append(tuple(g for g, x in zip(ML100K_GENRES, flags, strict=True) if x == "1"))
            report.loaded += 1
    report.check()
    return ItemTable(np.array(ids, dtype=str), np.array(titles, dtype=str), cats), report


# --- MovieLens latest (ratings.csv / movies.csv) --------------------------------------------


def load_movielens_csv(path: str | Path, items: str | Path | None = None) -> Dataset:
    """Load ``ratings.csv`` (userId,movieId,rating,timestamp) and ``movies.csv`` if present.

    Weights are the ratings. The genres of movies.csv are listed alphabetically, so none is
    "primary"; we keep the first listed as the primary category (documented, deterministic),
    and all of them in the catalog's category sets. "(no genres listed)" means no category.
    """
    path = Path(path)
    bulk = _bulk_ratings(path, "movielens-csv", "utf-8", ",", extra_fields=True, header=True)
    if bulk is not None:
        report, cols = bulk
    else:
        with _open_text(path) as fh:
            rows = ((n, f) for n, f in _rows(fh, ",")
                    if not (n == 1 and f and f[0].lower() in ("userid", "user_id")))
            report, cols = _load_ratings(rows, LoadReport(str(path), "movielens-csv"),
                                         extra_fields=True)
    return _with_items(path, items, "movies.csv", load_movielens_movies, report, cols,
                       "movielens-csv")


def load_movielens_movies(path: str | Path) -> tuple[ItemTable, LoadReport]:
    """Parse ``movies.csv`` (movieId,title,genres with ``|``-separated genres; quoted titles)."""
    path = Path(path)
    report = LoadReport(str(path), "movielens-csv items")
    ids, titles, cats = [], [], []
    with _open_text(path) as fh:
        for line_no, f in _rows(fh, ","):
            if line_no == 1 and f[0].lower() in ("movieid", "item_id"):
                continue
            report.rows += 1
            if len(f) != 3 or not f[0]:
                report.bad(line_no, f"expected 3 fields, got {len(f)}")
                continue
            genres = tuple(g for g in f[2].split("|") if g and g != "(no genres listed)")
            ids.append(f[0])
            titles.append(f[1])
            cats.append(genres)
            report.loaded += 1
    report.check()
    return ItemTable(np.array(ids, dtype=str), np.array(titles, dtype=str), cats), report


# --- generic events CSV and Taobao ----------------------------------------------------------

EVENT_COLUMNS = ("user_id", "item_id", "category_id", "event_type", "value", "timestamp")
_ID_COLUMNS = frozenset({"user_id", "item_id"})
_COLUMN_ALIASES = {
    "user": "user_id", "userid": "user_id", "item": "item_id", "itemid": "item_id",
    "category": "category_id", "categoryid": "category_id", "event": "event_type",
    "behavior": "event_type", "behavior_type": "event_type", "type": "event_type",
    "rating": "value", "weight": "value", "ts": "timestamp", "time": "timestamp",
}


#: The columns of an events CSV, for ``--help`` (and docs/datasets.md).
EVENTS_CSV_HELP = (
    "events-csv needs a header row naming its columns, in any order: user_id and item_id "
    "(required), timestamp (Unix time in s, ms, us or ns, told apart by size, or ISO 8601 "
    "such as 2024-05-01T12:30:00Z; without it the row order is the time), event_type "
    "(view, click, fav, add_to_cart, purchase, rating or a type named in --event-weights; "
    "weighed by --event-weights), value (the weight of a rating or of an untyped row; "
    "default 1), category_id. Aliases: user, item, ts/time, type/event, weight/rating, category"
)


def _header_columns(fields: list[str], path: Path) -> list[str]:
    """The canonical column names of the header row ``fields``; DatasetError if it is none."""
    names = [_COLUMN_ALIASES.get(f.lower().replace(" ", ""), f.lower()) for f in fields]
    first = ",".join(fields)
    columns = ("columns: user_id,item_id (required), timestamp, event_type, value, category_id "
               "(see --help for their meaning and aliases)")
    if "user_id" not in names or "item_id" not in names:
        raise DatasetError(f"{path}: an events CSV needs a header row naming its columns, "
                           f"e.g. user_id,item_id,timestamp; the first row {first[:80]!r} "
                           f"names no user_id and item_id; {columns}")
    unknown = [f for f, n in zip(fields, names, strict=True) if n not in EVENT_COLUMNS]
    if unknown:
        raise DatasetError(f"{path}: unknown column {unknown[0][:40]!r} in the header "
                           f"{first[:80]!r}; {columns}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DatasetError(f"{path}: the header {first[:80]!r} names {twice[0]} twice")
    return names


def _weight(event: str, value: str, weights: Mapping[str, float]) -> tuple[str, float]:
    event = EVENT_ALIASES.get(event.lower(), event.lower()) if event else ""
    if event == "rating" or (not event and value):
        return event or "rating", _weight_value(value)
    if not event:
        return "", 1.0
    if event not in weights:
        raise ValueError(f"unknown event type {event!r}")
    return event, weights[event]


def load_events_csv(path: str | Path, event_weights: Mapping[str, float] | None = None,
                    columns: Iterable[str] | None = None) -> Dataset:
    """Load an events CSV: a header row naming its columns (:data:`EVENTS_CSV_HELP`), then rows.

    The header fixes the column order and must name ``user_id`` and ``item_id`` (or an alias
    such as ``user``/``item``); any other name it holds must be a known column. A file without
    one raises :class:`DatasetError`: a headerless ``user,item,timestamp`` row cannot be told
    from ``user,item,value``. ``columns`` reads a headerless file whose layout is known (Taobao).
    Weight: ``event_weights[event]`` (merged over :data:`DEFAULT_EVENT_WEIGHTS`; ``value`` is
    ignored for typed events); a ``rating`` event, or a value without an event type, weighs
    its value; otherwise 1. An unknown event type makes the row malformed. Without a timestamp
    column the row number is the time, preserving file order. Ids are read as written (but
    for spaces after a comma before an unquoted one); other fields without surrounding
    whitespace.
    """
    path = Path(path)
    weights = {**DEFAULT_EVENT_WEIGHTS, **(event_weights or {})}
    weights = {EVENT_ALIASES.get(k.lower(), k.lower()): float(v) for k, v in weights.items()}
    report = LoadReport(str(path), "events-csv")
    cols = _Columns()
    names = list(columns) if columns else None
    seen_event = seen_cat = False
    with _open_text(path, "utf-8-sig") as fh:  # -sig: a spreadsheet's BOM is not in the header
        # NOTE: ids are taken as written, not stripped: the API takes an id with surrounding
        # spaces, and `str.strip` would also eat a no-break space or a line separator, so
        # "u " and "u" (or an item "\u2029" and no item) would be one user in training and
        # two online. rankly export-events quotes such fields.
        for line_no, f in _rows(fh, ",", strip=False):
            if names is None:
                names = _header_columns([x.strip() for x in f], path)
                continue
            report.rows += 1
            if len(f) != len(names):
                report.bad(line_no, f"expected {len(names)} fields, got {len(f)}")
                continue
            row = {n: x if n in _ID_COLUMNS else x.strip()
                   for n, x in zip(names, f, strict=True)}
            try:
                user, item = row.get("user_id", ""), row.get("item_id", "")
                if not user or not item:
                    raise ValueError("empty user_id or item_id")
                # the API's rule (it refuses such ids too, and takes any other text: a
                # no-break space, a format character, a line separator); NumPy str arrays
                # also drop trailing NULs, which would merge "a" and "a\x00" into one user
                if FORBIDDEN_IN_IDS.search(user) or FORBIDDEN_IN_IDS.search(item):
                    raise ValueError("control characters in user_id or item_id")
                event, w = _weight(row.get("event_type", ""), row.get("value", ""), weights)
                ts_text = row.get("timestamp", "")
                ts = _event_time(ts_text) if ts_text else line_no
                cat = row.get("category_id", "")
            except ValueError as exc:
                report.bad(line_no, str(exc) or "bad value")
                continue
            seen_event |= bool(event)
            seen_cat |= bool(cat)
            cols.add(user, item, w, ts, event, cat)
            report.loaded += 1
    report.check()
    return Dataset(cols.build(seen_event, seen_cat), None, (report,), "events-csv")


def load_taobao(path: str | Path, event_weights: Mapping[str, float] | None = None) -> Dataset:
    """Load Taobao UserBehavior (no header: user,item,category,pv|fav|cart|buy,unix ts).

    Behaviours map to view / fav / add_to_cart / purchase and weigh as in ``event_weights``.
    """
    ds = load_events_csv(path, event_weights,
                         columns=("user_id", "item_id", "category_id", "event_type", "timestamp"))
    for r in ds.reports:
        r.format = "taobao"
    return Dataset(ds.interactions, None, ds.reports, "taobao")


# --- format detection and the one entry point ---------------------------------------------


def resolve_paths(path: str | Path) -> Path:
    """Return the interactions file for ``path`` (a directory holding u.data or ratings.csv)."""
    p = Path(path)
    if p.is_dir():
        for name in ("u.data", "ratings.csv"):
            if (p / name).exists():
                return p / name
        raise DatasetError(f"{p}: no u.data or ratings.csv in this directory")
    if not p.exists():
        raise DatasetError(f"{p}: no such file")
    return p


def detect_format(path: str | Path) -> str:
    """Guess the format of an interactions file from its name and first line."""
    p = resolve_paths(path)
    if p.name == "u.data":
        return "movielens-100k"
    with open(p, encoding="latin-1", newline="") as fh:
        first = fh.readline().strip()
    if "\t" in first and len(first.split("\t")) == 4:
        return "movielens-100k"
    fields = [f.strip().lower() for f in first.split(",")]
    if fields[:2] == ["userid", "movieid"]:
        return "movielens-csv"
    if len(fields) == 5 and fields[3] in ("pv", "fav", "cart", "buy"):
        return "taobao"
    return "events-csv"


def load(path: str | Path, items: str | Path | None = None, format: str = "auto",
         event_weights: Mapping[str, float] | None = None) -> Dataset:
    """Load interactions (and item metadata) in ``format``, detected when "auto"."""
    if format not in FORMATS:
        raise DatasetError(f"unknown format {format!r}; one of {', '.join(FORMATS)}")
    p = resolve_paths(path)
    fmt = detect_format(p) if format == "auto" else format
    if fmt == "movielens-100k":
        return load_movielens_100k(p, items)
    if fmt == "movielens-csv":
        return load_movielens_csv(p, items)
    if fmt == "taobao":
        ds = load_taobao(p, event_weights)
    else:
        ds = load_events_csv(p, event_weights)
    if items is not None:
        table, report = load_item_csv(items)
        ds = Dataset(ds.interactions, table, (*ds.reports, report), ds.format)
    return ds


def load_item_csv(path: str | Path) -> tuple[ItemTable, LoadReport]:
    """Parse an item CSV ``item_id[,title][,categories]`` (header optional; ``|`` separates)."""
    p = Path(path)
    if p.name == "u.item":
        return load_movielens_100k_items(p)
    if p.name == "movies.csv":
        return load_movielens_movies(p)
    report = LoadReport(str(p), "items-csv")
    ids, titles, cats = [], [], []
    with _open_text(p) as fh:
        for line_no, f in _rows(fh, ","):
            if line_no == 1 and f[0].lower() in ("item_id", "itemid", "id"):
                continue
            report.rows += 1
            if not f[0] or len(f) > 3:
                report.bad(line_no, "expected item_id[,title][,categories]")
                continue
            ids.append(f[0])
            titles.append(f[1] if len(f) > 1 else "")
            cats.append(tuple(c for c in (f[2].split("|") if len(f) > 2 else []) if c))
            report.loaded += 1
    report.check()
    return ItemTable(np.array(ids, dtype=str), np.array(titles, dtype=str), cats), report


def parse_event_weights(text: str | None) -> dict[str, float]:
    """Parse ``"view=1,purchase=5"`` into a dict (raises DatasetError on a bad pair)."""
    out: dict[str, float] = {}
    for pair in (text or "").split(","):
        if not pair.strip():
            continue
        name, sep, value = pair.partition("=")
        try:
            if not sep:
                raise ValueError
            weight = float(value)
        except ValueError:
            raise DatasetError(f"bad event weight {pair!r}; expected name=number") from None
        if not (math.isfinite(weight) and weight >= 0):
            raise DatasetError(f"bad event weight {pair!r}; the weight must be a finite "
                               "number >= 0")
        out[name.strip()] = weight
    return out


# --- downloads ------------------------------------------------------------------------------

Opener = Callable[[str], IO[bytes]]


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(name: str, directory: str | Path, *, opener: Opener | None = None,
             url: str | None = None, sha256: str | None = None,
             progress: IO[str] | None = None) -> Path:
    """Download dataset ``name``, verify its pinned sha256, unzip it; return the data folder.

    ``opener`` (default ``urllib.request.urlopen``) and ``url``/``sha256`` are injectable for
    tests and mirrors. A checksum mismatch deletes the download and raises DatasetError; an
    already verified archive in ``directory`` is not downloaded again. A byte counter is
    drawn on ``progress`` when it is a terminal (:mod:`rankly.engine.offline.progress`).
    """
    if name not in DOWNLOADS:
        raise DatasetError(f"unknown dataset {name!r}; one of {', '.join(DOWNLOADS)}")
    spec = DOWNLOADS[name]
    url, expected = url or spec.url, sha256 or spec.sha256
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / Path(spec.url).name
    if not (archive.exists() and sha256_of(archive) == expected):
        tmp = archive.with_suffix(".part")
        with ((opener or urllib.request.urlopen)(url) as src, open(tmp, "wb") as dst,
              progress_bars.bar(_content_length(src), f"downloading {name}", progress is None,
                                unit="B", unit_scale=True, stream=progress) as bar):
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
                bar.update(len(block))
        actual = sha256_of(tmp)
        if actual != expected:
            tmp.unlink()
            raise DatasetError(f"{url}: sha256 {actual} does not match the pinned {expected}")
        tmp.replace(archive)
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            target = (directory / member).resolve()
            if not target.is_relative_to(directory.resolve()):
                raise DatasetError(f"{archive}: unsafe member path {member!r}")
        zf.extractall(directory)
    return directory / spec.member_dir


def _content_length(response: IO[bytes]) -> int | None:
    """The size a response announces (HTTP Content-Length; file URLs set it too), or None."""
    headers = getattr(response, "headers", None)
    try:
        return int(headers.get("Content-Length")) if headers is not None else None
    except (TypeError, ValueError):
        return None


# --- CLI: `rankly datasets` -----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``rankly datasets download NAME [--dir DIR]`` / ``rankly datasets inspect``."""
    sub = parser.add_subparsers(dest="datasets_command", required=True)
    dl = sub.add_parser("download", help="download and verify a public dataset")
    dl.add_argument("name", choices=sorted(DOWNLOADS), help="the dataset to download")
    dl.add_argument("--dir", default="data", help="target directory (default: ./data)")
    dl.add_argument("--quiet", action="store_true", help="no progress bar")
    ins = sub.add_parser("inspect", help="load a file and print the load report")
    add_input_arguments(ins)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared ``--interactions/--items/--format/--event-weights`` arguments."""
    parser.add_argument("--interactions", required=True,
                        help="interactions file, or a folder with u.data / ratings.csv")
    parser.add_argument("--items", default=None, help="item metadata (u.item, movies.csv, CSV)")
    parser.add_argument("--format", default="auto", choices=FORMATS,
                        help="auto (default) detects MovieLens 100K (u.data), MovieLens latest "
                             "(ratings.csv), Taobao UserBehavior (headerless) and otherwise "
                             f"reads events-csv. {EVENTS_CSV_HELP}.")
    parser.add_argument("--event-weights", default=None,
                        help="e.g. view=1,click=1,add_to_cart=3,purchase=5")


def load_from_args(args: argparse.Namespace, out: IO[str] = sys.stderr,
                   event_types: Mapping[str, float] | None = None) -> Dataset:
    """Load the dataset named by :func:`add_input_arguments` and print its load reports.

    ``event_types`` (the settings' custom types and their weights, what the server accepts
    and weighs) are known event types here too; ``--event-weights`` overrides them."""
    weights = {**(event_types or {}),
               **parse_event_weights(getattr(args, "event_weights", None))}
    ds = load(args.interactions, args.items, args.format, weights or None)
    for report in ds.reports:
        print(report.summary(), file=out)
    return ds


def run(args: argparse.Namespace) -> int:
    try:
        if args.datasets_command == "download":
            folder = download(args.name, args.dir,
                              progress=None if args.quiet else sys.stderr)
            print(f"{args.name}: verified and unpacked into {folder}")
        else:
            ds = load_from_args(args, out=sys.stdout)
            it = ds.interactions
            print(f"{len(it)} interactions, {np.unique(it.user_ids).size} users, "
                  f"{np.unique(it.item_ids).size} items")
    except BrokenPipeError:
        raise  # the reader went away (`| head -1`): the command line ends quietly
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a directory or file named on the command line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0
