"""An experiment variant's options name their component exactly: a spelling the variant
would not be served with is refused, not silently dropped."""

from __future__ import annotations

import pytest

from rankly.engine.api import hookimpl
from rankly.engine.config import ConfigError
from rankly.engine.experiments.assignment import parse_experiment
from rankly.engine.plugins import check_experiment, collect_all, make_plugin_manager


class CategoryCap:
    def rerank(self, user, ranking, n):
        return ranking


class Plugin:
    @hookimpl
    def register_rerankers(self, register):
        register("category-cap", lambda ctx: CategoryCap(), options={"cap": 2})


@pytest.fixture(scope="module")
def registries():
    return collect_all(make_plugin_manager(load_entrypoints=False, extra=[Plugin()]))


def _experiment(section):
    return parse_experiment({"key": "caps", "variants": [
        {"name": "a"}, {"name": "b", "options": {section: {"cap": 1}}}]})


def test_a_variant_option_section_spelt_exactly_is_accepted(registries):
    check_experiment(_experiment("category-cap"), registries)


@pytest.mark.parametrize("section", ["CATEGORY_CAP", "category_cap"])
def test_a_variant_option_section_spelt_as_bash_exports_it_is_refused(registries, section):
    with pytest.raises(ConfigError) as err:
        check_experiment(_experiment(section), registries)
    assert f"no such name {section!r}; did you mean 'category-cap'?" in str(err.value)
