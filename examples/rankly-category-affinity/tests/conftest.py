"""The plugin's tests run on rankly's kit (the `rankly` pytest plugin, via its entry point)."""

import importlib.metadata as md

import pytest


@pytest.fixture(scope="session")
def rankly_plugins():
    """Installed (`pip install .`), the plugin is found through its entry point; from a plain
    checkout, hand it to the kit here."""
    if any(ep.value == "rankly_category_affinity" for ep in md.entry_points(group="rankly")):
        return []
    import rankly_category_affinity

    return [rankly_category_affinity]
