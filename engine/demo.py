"""A realistic synthetic shop for the demo: users with tastes, categorized items, timestamps."""

from __future__ import annotations

import numpy as np

from rankly.engine.interactions import Interactions, ItemTable

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
