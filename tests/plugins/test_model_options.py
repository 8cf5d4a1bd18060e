"""The built-in models declare their option keys: a typo stops the start, env strings parse."""

from __future__ import annotations

import pytest

from rankly.engine.config import ConfigError, load_settings
from rankly.engine.plugins import (
    check_configuration,
    collect,
    component_options,
    make_plugin_manager,
)

KINDS = ("trainers", "candidate_generators", "scorers")


@pytest.fixture(scope="module")
def registries():
    pm = make_plugin_manager()
    return {k: collect(pm, k) for k in (*KINDS, "rerankers", "caches")}


@pytest.mark.parametrize("name", ["pop", "itemknn", "ease", "als", "blend", "als-ivf",
                                  "popular"])
def test_every_built_in_model_declares_its_options(registries, name):
    for kind in KINDS:
        reg = registries[kind]
        if name in reg.entries:
            assert reg.options.get(name) is not None, f"{kind} {name} declares no options"


@pytest.mark.parametrize("section, typo, known", [
    ("ease", "lamda", "lambda"), ("itemknn", "neighbors", "neighbours"),
    ("blend", "max_los", "max_loss"), ("als", "factor", "factors"),
])
def test_a_mistyped_model_option_stops_the_start(section, typo, known):
    settings = load_settings(environ={f"RANKLY_PLUGINS__{section.upper()}__{typo.upper()}":
                                      "1"})
    with pytest.raises(ConfigError) as err:
        check_configuration(settings)
    assert typo in str(err.value) and known in str(err.value)


def test_environment_strings_parse_as_the_declared_type(registries):
    opts = component_options("ease", {"lambda": "250", "min_count": "3"}, registries)
    assert opts == {"lambda": 250.0, "min_count": 3}
