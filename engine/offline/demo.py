"""The demo's model: a realistic synthetic shop (users with tastes, categorized items,
timestamps) and the artifacts trained on it, kept in a per-user cache and reused."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from .. import __version__
from ..config import load_settings
from ..model import MANIFEST, ArtifactError, fingerprint, load_model, save_model
from . import training
from .interactions import Interactions, ItemTable, build_training_data

CATEGORIES = {
    "Books": ["Novel", "Atlas", "Cookbook", "Biography", "Thriller", "Poetry Collection"],
    "Music": ["Vinyl", "Album", "Songbook", "Live Recording", "Box Set"],
    "Movies": ["Drama", "Comedy", "Documentary", "Western", "Animated Feature"],
    "Games": ["Board Game", "Puzzle", "Card Game", "Strategy Game", "Party Game"],
    "Electronics": ["Headphones", "Speaker", "Charger", "Keyboard", "Camera"],
    "Kitchen": ["Skillet", "Knife Set", "Teapot", "Blender", "Cutting Board"],
    "Garden": ["Planter", "Hose", "Seed Kit", "Pruner", "Bird Feeder"],
    "Toys": ["Robot", "Kite", "Building Set", "Plush Bear", "Train Set"],
    "Sports": ["Yoga Mat", "Football", "Tennis Racket", "Bike Helmet", "Running Belt"],
    "Beauty": ["Face Cream", "Perfume", "Hair Brush", "Lip Balm", "Bath Salts"],
    "Fashion": ["Scarf", "Sneakers", "Raincoat", "Wallet", "Sunglasses"],
    "Outdoors": ["Tent", "Lantern", "Backpack", "Sleeping Bag", "Water Bottle"],
}
ADJECTIVES = ["Classic", "Compact", "Deluxe", "Vintage", "Modern", "Handmade", "Essential",
              "Midnight", "Golden", "Nordic", "Urban", "Wild", "Quiet", "Bright", "Little"]
EVENT_WEIGHTS = {"view": 1.0, "click": 1.0, "add_to_cart": 3.0, "purchase": 5.0}


def synthesize(n_users: int = 1000, n_items: int = 1200, dim: int = 8, mean_events: int = 40,
               days: int = 90, seed: int = 7) -> tuple[Interactions, ItemTable]:
    """Return interactions and items: power-law popularity, latent tastes, category affinity.

    Users and items are numbered from 1 (like MovieLens). Each user samples items (without
    repetition) from a softmax over taste match + log popularity, over ``days`` days.
    """
    rng = np.random.default_rng(seed)
    names = list(CATEGORIES)
    item_cat = rng.integers(0, len(names), n_items)
    centers = rng.normal(size=(len(names), dim)) * 1.5
    item_vec = centers[item_cat] + rng.normal(size=(n_items, dim))
    log_pop = -0.9 * np.log(rng.permutation(n_items) + 1.0)
    fav = rng.integers(0, len(names), n_users)
    user_vec = centers[fav] * 0.8 + rng.normal(size=(n_users, dim))
    counts = np.clip(rng.lognormal(np.log(mean_events), 0.6, n_users).astype(int), 8, n_items // 3)
    t0 = 1_760_000_000
    users, items, ts, kinds = [], [], [], []
    kind_names = np.array(list(EVENT_WEIGHTS))
    for u in range(n_users):
        logits = (item_vec @ user_vec[u]) / np.sqrt(dim) + log_pop
        # Gumbel top-k: a sample without replacement from softmax(logits)
        picks = np.argsort(-(logits + rng.gumbel(size=n_items)))[: counts[u]]
        start = rng.uniform(0, days * 0.5)
        times = np.sort(t0 + (start + rng.uniform(0, days - start, picks.size)) * 86400)
        users.append(np.full(picks.size, u + 1))
        items.append(picks + 1)
        ts.append(times.astype(np.int64))
        kinds.append(kind_names[rng.choice(len(kind_names), picks.size, p=[.6, .2, .12, .08])])
    kind = np.concatenate(kinds)
    interactions = Interactions(
        user_ids=np.concatenate(users).astype(str),
        item_ids=np.concatenate(items).astype(str),
        weights=np.array([EVENT_WEIGHTS[k] for k in kind], dtype=np.float32),
        timestamps=np.concatenate(ts),
        event_types=kind,
    )
    titles = []
    for i in range(n_items):
        cat = names[item_cat[i]]
        noun = CATEGORIES[cat][i % len(CATEGORIES[cat])]
        titles.append(f"{ADJECTIVES[(i * 7) % len(ADJECTIVES)]} {noun} #{i + 1}")
    items_table = ItemTable(
        item_ids=(np.arange(n_items) + 1).astype(str),
        titles=np.array(titles),
        categories=[(names[c],) for c in item_cat],
    )
    return interactions, items_table


# --- the trained artifacts, reused across starts ----------------------------------------------

#: The shop the demo trains on: :func:`synthesize`'s arguments besides the seed.
SHOP: Mapping[str, int] = {"n_users": 1000, "n_items": 1200, "dim": 8, "mean_events": 40,
                           "days": 90}
#: Written next to the manifest, last: what the artifacts were trained from.
FINGERPRINT = "demo-fingerprint.json"
SOURCE = "rankly demo (synthetic)"


class DemoError(RuntimeError):
    """The artifact directory cannot be used: it holds something that is not the demo's."""


def default_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/rankly/demo``, else ``~/.cache/rankly/demo`` (XDG ignores a relative
    ``XDG_CACHE_HOME``)."""
    base = environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "rankly" / "demo"


def wanted(seed: int) -> dict[str, Any]:
    """What artifacts must have been trained from to be reused: the rankly version, the
    shop's parameters and seed, the trainers."""
    return {"rankly": __version__, "seed": seed, "shop": dict(SHOP),
            "trainers": list(training.DEFAULT_TRAINERS)}


def stale_reason(directory: Path, seed: int) -> str | None:
    """Why the artifacts in ``directory`` cannot be reused for ``seed``; None if they can
    (they exist, load, and were trained from :func:`wanted`)."""
    try:
        stored = json.loads((directory / FINGERPRINT).read_text())
    except FileNotFoundError:
        return "no trained artifacts yet"
    except (OSError, ValueError) as exc:
        return f"unreadable {FINGERPRINT}: {exc}"
    if not isinstance(stored, dict) or stored.get("trained_from") != wanted(seed):
        return "trained from other data, parameters or rankly version"
    try:
        model = load_model(directory)
    except (ArtifactError, OSError, ValueError) as exc:
        return f"they do not load: {exc}"
    if model.version != stored.get("model_version") or sorted(model.parts) != sorted(
            stored.get("parts", ())):
        return "the fingerprint is not for these artifacts"
    return None


def trained_at(directory: Path) -> str:
    """When the artifacts in ``directory`` were trained (UTC, to the second)."""
    created = str(load_model(directory).manifest.get("created", ""))
    return created[:19].replace("T", " ") + " UTC"


def train_shop(out: str | Path, seed: int, progress: IO[str] | None = None,
               info: Mapping[str, Any] | None = None, **shop: Any) -> tuple[Any, list[Any]]:
    """Train the default trainers on a synthetic shop (:func:`synthesize` of ``seed`` and
    ``shop``) and write the artifacts to ``out``; return (the training data, the parts).

    The demo trains with it, and so do the tests and benchmarks that need a trained shop."""
    interactions, items = synthesize(seed=seed, **shop)
    data = build_training_data(interactions, items)
    parts = training.train(data, training.DEFAULT_TRAINERS, load_settings(environ={}),
                           progress=progress)
    save_model(out, data.catalog, data.users, parts,
               data_fingerprint=fingerprint(data.user_idx, data.item_idx, data.weights),
               info=dict(info or {}))
    return data, parts


def train_into(directory: str | Path, seed: int, progress: IO[str] | None = None) -> str:
    """Train the default trainers on the shop of ``seed`` into ``directory``; return the
    training summary.

    Trains in a sibling directory and renames it into place, so a server still
    memory-mapping the old arrays keeps reading intact files; the fingerprint file
    (:func:`wanted`) is written last. ``progress`` is handed to :func:`training.train`.
    Raises :class:`DemoError` rather than replace a non-empty directory that is not the demo's.
    """
    path = Path(directory)
    _check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-new-"))
    try:
        started = time.perf_counter()
        data, parts = train_shop(tmp, seed, progress, {"source": SOURCE, "seed": seed}, **SHOP)
        model = load_model(tmp)
        (tmp / FINGERPRINT).write_text(json.dumps({
            "trained_from": wanted(seed), "model_version": model.version,
            "parts": sorted(model.parts)}, indent=2) + "\n")
        summary = training.summary(path, data, parts, time.perf_counter() - started)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _check_replaceable(path: Path) -> None:
    """Raise DemoError if ``path`` is a non-empty directory that is not demo artifacts."""
    if not path.exists():
        return
    if not path.is_dir():
        raise DemoError(f"{path} is not a directory")
    if (path / FINGERPRINT).exists() or not any(path.iterdir()):
        return
    try:
        source = json.loads((path / MANIFEST).read_text()).get("info", {}).get("source")
    except (OSError, ValueError, AttributeError):
        source = None
    if source != SOURCE:
        raise DemoError(f"{path} holds something other than rankly demo artifacts; "
                        "choose another --artifacts directory")


def _swap_in(new: Path, path: Path) -> None:
    """Rename ``new`` to ``path``; an old ``path`` is moved aside first and then deleted
    (its files stay readable by a process that has them open or mapped)."""
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-old-"))
        os.replace(path, old)  # onto an empty directory: allowed on POSIX
    os.replace(new, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
