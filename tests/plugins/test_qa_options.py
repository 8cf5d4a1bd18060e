"""A third-party component's declared options: file values are checked against the default's
type, list defaults included."""

from __future__ import annotations

import pytest

from rankly.engine.api import hookimpl
from rankly.engine.config import ConfigError
from rankly.engine.plugins import (
    check_plugin_sections,
    collect_all,
    component_options,
    make_plugin_manager,
)


class Weighted:
    def score(self, user, items):
        raise NotImplementedError


class Plugin:
    @hookimpl
    def register_scorers(self, register):
        register("weighted", lambda ctx: Weighted(),
                 options={"weights": [0.3, 0.6], "caps": (2, 3), "names": ["a"],
                          "mixed": [1, "a"], "free": None})


@pytest.fixture(scope="module")
def registries():
    return collect_all(make_plugin_manager(load_entrypoints=False, extra=[Plugin()]))


@pytest.mark.parametrize("key, value", [
    ("weights", ["a", "b"]), ("weights", [0.3, None]), ("weights", [True]),
    ("weights", {"a": 1}), ("weights", 0.5), ("caps", [2.5]), ("caps", [True]),
    ("names", [1]),
])
def test_a_list_option_from_a_file_of_another_type_is_refused(registries, key, value):
    with pytest.raises(ConfigError) as err:
        component_options("weighted", {key: value}, registries)
    assert f"plugins.weighted.{key}" in str(err.value)


@pytest.mark.parametrize("key, value", [
    ("weights", [1, 0.5]), ("weights", (0.1,)), ("weights", []), ("caps", [4, 5]),
    ("names", ["x", "y"]), ("mixed", {"any": "thing"}), ("free", [object]),
    ("weights", None),
])
def test_a_list_option_from_a_file_of_its_type_is_taken_as_given(registries, key, value):
    assert component_options("weighted", {key: value}, registries) == {key: value}


def test_an_environment_list_still_parses_as_the_default_s_elements(registries):
    assert component_options("weighted", {"weights": "0.1,0.2"}, registries) == {
        "weights": [0.1, 0.2]}


def test_a_settings_section_with_a_list_of_strings_for_a_number_list_is_refused(registries):
    with pytest.raises(ConfigError) as err:
        check_plugin_sections("plugins", {"weighted": {"weights": ["x"]}}, registries)
    assert "plugins.weighted.weights" in str(err.value)
