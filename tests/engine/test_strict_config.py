"""Strict configuration: unknown component names and option keys, and factories that raise,
stop the server at start (or the PUT of an experiment) with a message naming them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from starlette.testclient import TestClient

from rankly.engine import cli, hookimpl
from rankly.engine.config import ConfigError
from rankly.engine.plugins import check_configuration, make_plugin_manager
from rankly.engine.runtime import ComponentError, build_runtime
from rankly.engine.serving.app import create_app

TOKEN = "s3cret-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SeededRandomScorer:
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def score(self, user, items):
        return np.random.default_rng(self.seed).random(items.size).astype(np.float32)


class SeededRandom:
    """A scorer with a hyphenated name and one declared option."""

    def __init__(self) -> None:
        self.seen_options: list[dict] = []

    @hookimpl
    def register_scorers(self, register):
        def factory(ctx):
            self.seen_options.append(dict(ctx.options))
            return SeededRandomScorer(ctx.options["seed"])

        register("seeded-random", factory, options={"seed": 0})


class Broken:
    """A scorer whose factory raises."""

    @hookimpl
    def register_scorers(self, register):
        def factory(ctx):
            raise ValueError("no weights for this model")

        register("broken", factory)


def runtime(settings, model, *plugins):
    return build_runtime(settings, model, pm=make_plugin_manager(extra=plugins))


@pytest.mark.parametrize(("env", "bad", "where"), [
    ({"RANKLY_PIPELINE__SCORERS": "seeded-randm,popular"}, "'seeded-randm'", "pipeline.scorers"),
    ({"RANKLY_PIPELINE__CANDIDATES": "popular,trendy"}, "'trendy'", "pipeline.candidates"),
    ({"RANKLY_PIPELINE__RERANKERS": "diversty"}, "'diversty'", "pipeline.rerankers"),
    ({"RANKLY_PIPELINE__SIMILAR": "itemknn,nearest"}, "'nearest'", "pipeline.similar"),
    ({"RANKLY_PIPELINE__FALLBACK": "populer"}, "'populer'", "pipeline.fallback"),
    ({"RANKLY_CACHE__TIERS": "l1,l3"}, "'l3'", "cache.tiers"),
    ({"RANKLY_PLUGINS__DIVERSTY__CAP": "2"}, "'diversty'", "plugins: section"),
    ({"RANKLY_PLUGINS__DIVERSITY__CAPP": "2"}, "'capp'", "plugins.diversity: option key"),
])
def test_an_unknown_name_stops_the_start_naming_it_and_the_available_names(
        model, settings_for, artifacts, env, bad, where):
    from rankly.engine.config import load_settings

    settings = load_settings(environ=env, artifacts=artifacts)
    with pytest.raises(ConfigError) as err:
        runtime(settings, model, SeededRandom())
    message = str(err.value)
    assert where in message and bad in message
    assert "available: " in message


def test_the_message_lists_the_available_names_and_a_close_match(model, settings_for,
                                                                  artifacts):
    from rankly.engine.config import load_settings

    settings = load_settings(environ={"RANKLY_PIPELINE__SCORERS": "seeded-randm,popular"},
                             artifacts=artifacts)
    with pytest.raises(ConfigError, match="did you mean 'seeded-random'") as err:
        runtime(settings, model, SeededRandom())
    assert "seeded-random" in str(err.value).split("available: ")[1]
    assert "popular" in str(err.value).split("available: ")[1]


def test_plugin_options_come_from_variables_bash_can_export(model, artifacts):
    from rankly.engine.config import load_settings

    plugin = SeededRandom()
    settings = load_settings(environ={"RANKLY_PIPELINE__SCORERS": "seeded-random,popular",
                                      "RANKLY_PLUGINS__SEEDED_RANDOM__SEED": "5"},
                             artifacts=artifacts)
    rt = runtime(settings, model, plugin)
    assert rt.components.scorers["seeded-random"].seed == 5  # parsed as the default's type
    assert plugin.seen_options[-1] == {"seed": 5}
    assert rt.settings.plugin_options("seeded-random") == {"seed": 5}


class Typed:
    """A reranker whose options have defaults of each scalar type."""

    @hookimpl
    def register_rerankers(self, register):
        register("typed", lambda ctx: None,
                 options={"cap": 2, "weight": 0.5, "fill": True, "mode": "all"})


@pytest.mark.parametrize(("given", "expected"), [
    ({"cap": 2.5}, "plugins.typed.cap: expected int, got float 2.5"),
    ({"cap": True}, "plugins.typed.cap: expected int, got bool True"),
    ({"cap": [3]}, "plugins.typed.cap: expected int, got list [3]"),
    ({"weight": "heavy"}, "plugins.typed.weight: expected float, got 'heavy'"),
    ({"weight": False}, "plugins.typed.weight: expected float, got bool False"),
    ({"fill": 1}, "plugins.typed.fill: expected bool, got int 1"),
    ({"mode": 3}, "plugins.typed.mode: expected str, got int 3"),
])
def test_an_option_value_of_the_wrong_type_in_a_file_stops_the_start(model, settings_for,
                                                                      artifacts, given,
                                                                      expected):
    settings = settings_for(artifacts).replace(plugins={"typed": given})
    with pytest.raises(ConfigError) as err:
        runtime(settings, model, Typed())
    assert str(err.value) == expected


def test_an_option_value_of_its_defaults_type_is_kept_as_given(model, settings_for,
                                                               artifacts):
    given = {"cap": 3, "weight": 2, "fill": False, "mode": "some"}
    settings = settings_for(artifacts).replace(plugins={"typed": given})
    assert runtime(settings, model, Typed()).settings.plugin_options("typed") == given


class Listy:
    """A reranker whose options have list and tuple defaults."""

    def __init__(self) -> None:
        self.seen_options: list[dict] = []

    @hookimpl
    def register_rerankers(self, register):
        def factory(ctx):
            self.seen_options.append(dict(ctx.options))

        register("listy", factory, options={"weights": (0.5, 1.0), "caps": [2],
                                            "anything": ()})


@pytest.mark.parametrize(("value", "weights"), [
    ("0.3, 0.6", (0.3, 0.6)), ("[1]", (1.0,)), ("[]", ()), ("2", (2.0,)),
])
def test_a_list_option_from_the_environment_is_parsed_as_its_default(model, artifacts,
                                                                      value, weights):
    from rankly.engine.config import load_settings

    plugin = Listy()
    settings = load_settings(environ={"RANKLY_PLUGINS__LISTY__WEIGHTS": value,
                                      "RANKLY_PLUGINS__LISTY__CAPS": "3,4",
                                      "RANKLY_PLUGINS__LISTY__ANYTHING": "a;b"},
                             artifacts=artifacts)
    runtime(settings, model, plugin)
    assert plugin.seen_options[-1] == {"weights": weights, "caps": [3, 4], "anything": "a;b"}


def test_a_list_option_that_does_not_parse_stops_the_start_naming_it(model, artifacts):
    from rankly.engine.config import load_settings

    settings = load_settings(environ={"RANKLY_PLUGINS__LISTY__CAPS": "3,4.5"},
                             artifacts=artifacts)
    with pytest.raises(ConfigError) as err:
        runtime(settings, model, Listy())
    assert str(err.value) == ("plugins.listy.caps must be a list of integers separated by "
                              "commas, got '3,4.5'")


def test_declared_defaults_reach_the_factory(model, settings_for, artifacts):
    plugin = SeededRandom()
    runtime(settings_for(artifacts), model, plugin)
    assert plugin.seen_options[-1] == {"seed": 0}


def test_a_configured_factory_that_raises_stops_the_start_naming_it(model, settings_for,
                                                                     artifacts):
    settings = settings_for(artifacts)
    settings = settings.replace(pipeline=settings.pipeline.__class__(
        scorers=("broken", "popular")))
    with pytest.raises(ComponentError, match=r"scorer 'broken' \(plugin .*\) failed to build: "
                                             r"ValueError: no weights for this model"):
        runtime(settings, model, Broken())


def test_an_optional_component_that_raises_is_served_without_and_ready_names_it(
        model, artifacts):
    from rankly.engine.config import load_settings

    settings = load_settings(environ={"RANKLY_PIPELINE__SCORERS": "broken,popular",
                                      "RANKLY_PIPELINE__OPTIONAL": "broken"},
                             artifacts=artifacts, data_dir=str(artifacts / "run"))
    rt = runtime(settings, model, Broken())
    assert "broken" not in rt.components.scorers
    assert "ValueError: no weights" in rt.components.missing["broken"]
    with TestClient(create_app(settings, model, pm=make_plugin_manager(extra=[Broken()]))) as c:
        body = c.get("/ready").json()
        assert body["status"] == "ready"
        assert "broken" in body["missing_components"]
        r = c.get("/recommendations", params={"user_id": "1", "n": 5})
        assert r.status_code == 200 and len(r.json()["items"]) == 5


class Partless:
    """A scorer that serves a part this model was not trained with (its factory: None)."""

    @hookimpl
    def register_scorers(self, register):
        register("needs-part", lambda ctx: ctx.model.part("never-trained") and None)


def test_a_configured_component_without_its_part_is_named_by_ready(model, artifacts):
    from rankly.engine.config import load_settings

    settings = load_settings(environ={"RANKLY_PIPELINE__SCORERS": "needs-part,popular"},
                             artifacts=artifacts, data_dir=str(artifacts / "run"))
    with TestClient(create_app(settings, model,
                               pm=make_plugin_manager(extra=[Partless()]))) as c:
        body = c.get("/ready").json()
        assert body["status"] == "ready"
        assert "factory returned None" in body["missing_components"]["needs-part"]
        r = c.get("/recommendations", params={"user_id": "1", "n": 5})
        assert r.status_code == 200 and len(r.json()["items"]) == 5


def test_an_unused_factory_that_raises_does_not_stop_the_start(model, settings_for,
                                                                artifacts):
    rt = runtime(settings_for(artifacts), model, Broken())
    assert "broken" in rt.components.missing


def test_the_app_does_not_start_when_a_configured_factory_raises(model, settings_for,
                                                                  artifacts):
    settings = settings_for(artifacts)
    settings = settings.replace(pipeline=settings.pipeline.__class__(
        scorers=("broken", "popular")))
    app = create_app(settings, model, pm=make_plugin_manager(extra=[Broken()]))
    with pytest.raises(ComponentError, match="'broken'"), TestClient(app):
        pass


def test_rankly_serve_exits_naming_an_unknown_component(monkeypatch, capsys, artifacts):
    monkeypatch.setenv("RANKLY_PIPELINE__SCORERS", "seeded-randm,popular")
    assert cli.main(["serve", "--artifacts", str(artifacts)]) == 2
    err = capsys.readouterr().err
    assert "pipeline.scorers" in err and "'seeded-randm'" in err and "available: " in err


def test_check_configuration_checks_the_configured_experiments(settings_for, artifacts):
    settings = settings_for(artifacts, experiments=({
        "key": "exp", "status": "running",
        "variants": [{"name": "a"}, {"name": "b", "scorers": ["seeded-randm"]}]},))
    with pytest.raises(ConfigError, match=r"experiment 'exp': variants\[1\]\.scorers.*"
                                          r"'seeded-randm'"):
        check_configuration(settings, make_plugin_manager(extra=[SeededRandom()]))


@pytest.mark.parametrize(("variant", "bad"), [
    ({"name": "b", "scorers": ["seeded-randm"]}, "'seeded-randm'"),
    ({"name": "b", "rerankers": ["diversty"]}, "'diversty'"),
    ({"name": "b", "options": {"diversty": {"cap": 1}}}, "'diversty'"),
    ({"name": "b", "options": {"diversity": {"capp": 1}}}, "'capp'"),
])
def test_put_experiment_naming_an_unknown_component_or_option_is_a_422(
        artifacts, settings_for, variant, bad):
    settings = settings_for(artifacts, admin_token=TOKEN)
    body = {"status": "running", "variants": [{"name": "a"}, variant]}
    with TestClient(create_app(settings)) as c:
        r = c.put("/experiments/exp", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 422
        message = r.json()["error"]["message"]
        assert bad in message and "available: " in message
        assert c.get("/experiments/exp", headers={"Authorization": f"Bearer {TOKEN}"}
                     ).status_code == 404


BROKEN_PLUGIN = '''
from rankly.engine.api import hookimpl


@hookimpl
def register_scorers(register):
    def factory(ctx):
        raise ValueError("no weights for this model")

    register("broken", factory)
'''


@pytest.mark.slow
def test_rankly_serve_exits_naming_a_configured_factory_that_raises(tmp_path, artifacts):
    (tmp_path / "broken_plugin.py").write_text(BROKEN_PLUGIN)
    info = tmp_path / "broken_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[rankly]\nbroken = broken_plugin\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path),
                                                        os.environ.get("PYTHONPATH", "")]),
           "RANKLY_PIPELINE__SCORERS": "broken,popular", "RANKLY_PORT": str(free_port()),
           "RANKLY_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-m", "rankly.engine.cli", "serve", "--artifacts",
                          str(artifacts)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr  # uvicorn's "startup failed"
    assert "rankly serve: scorer 'broken' (plugin broken) failed to build: ValueError: no " \
           "weights for this model; list it in pipeline.optional to serve without it" \
           in out.stderr
    assert "Traceback" not in out.stderr


def test_rankly_plugins_lists_the_declared_option_keys():
    from rankly.engine.plugins import describe_plugins

    rows = {r["name"]: r for r in describe_plugins(make_plugin_manager(extra=[SeededRandom()]))}
    assert rows["diversity"]["options"] == {"diversity": ["cap", "fill"]}
    assert rows["local_cache"]["options"]["l1"][:2] == ["follow_invalidations", "invalidation"]
    (mine,) = [r for r in rows.values() if "seeded-random" in r["options"]]
    assert mine["options"] == {"seeded-random": ["seed"]}


def install_broken_distribution(root) -> None:
    """An installed plugin whose module does not import (a typo in its import line)."""
    (root / "broken_import_plugin.py").write_text(
        "from rankly.engine.api import hookimpl, Scorerr\n")
    info = root / "rankly_broken_import-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rankly-broken-import\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text("[rankly]\nbroken_import = broken_import_plugin\n")


def test_a_plugin_that_does_not_import_is_named_with_how_to_block_it(tmp_path, monkeypatch,
                                                                     capsys):
    from rankly.engine.plugins import PluginError

    install_broken_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as err:
        make_plugin_manager()
    assert str(err.value).startswith(
        "plugin broken_import (rankly-broken-import 1.0: broken_import_plugin) failed to "
        "load: ImportError: cannot import name 'Scorerr' from 'rankly.engine.api'")
    assert str(err.value).endswith("block it with RANKLY_BLOCKED_PLUGINS=broken_import")
    assert cli.main(["plugins"]) == 2
    assert "rankly: plugin error: plugin broken_import (" in capsys.readouterr().err
    pm = make_plugin_manager(blocked=("broken_import",))
    assert pm.get_plugin("popularity") is not None


def test_a_misspelt_hook_is_named_with_its_plugin_and_a_close_match():
    from rankly.engine.plugins import PluginError

    class Misspelt:
        @hookimpl
        def register_scorer(self, register):
            pass

    with pytest.raises(PluginError) as err:
        make_plugin_manager(load_entrypoints=False, extra=[Misspelt()])
    assert str(err.value).startswith(
        "plugin Misspelt implements 'register_scorer', which is no rankly hook; did you mean "
        "'register_scorers'? (hooks: register_caches, ")


def test_an_unused_factory_that_raises_logs_one_line_not_a_traceback(model, settings_for,
                                                                       artifacts, caplog):
    # any installed plugin's components are built; a broken package the pipeline does not
    # use is named (and /ready lists it) without a traceback in the server's log
    with caplog.at_level("WARNING", logger="rankly"):
        rt = runtime(settings_for(artifacts), model, Broken())
    assert "broken" in rt.components.missing
    [record] = [r for r in caplog.records if "'broken'" in r.getMessage()]
    assert record.exc_info is None and "unused scorer" in record.getMessage()
    assert "ValueError: no weights for this model" in record.getMessage()


class RaisingFallback:
    """A scorer that builds but raises when it scores (here: the cold user of the fallback)."""

    @hookimpl
    def register_scorers(self, register):
        class Scorer:
            def score(self, user, items):
                raise RuntimeError("feature store down")

        register("shaky", lambda ctx: Scorer())


def test_a_fallback_scorer_that_raises_stops_the_start_unless_optional(model, artifacts):
    from rankly.engine.config import load_settings

    settings = load_settings(environ={"RANKLY_PIPELINE__FALLBACK": "shaky"},
                             artifacts=artifacts, data_dir=str(artifacts / "run"))
    with pytest.raises(ComponentError, match=r"fallback scorer 'shaky' \(plugin .*\) raised "
                                             r"scoring a cold user: RuntimeError: feature "
                                             r"store down; list it in pipeline.optional"):
        runtime(settings, model, RaisingFallback())
    optional = load_settings(environ={"RANKLY_PIPELINE__FALLBACK": "shaky",
                                      "RANKLY_PIPELINE__OPTIONAL": "shaky"},
                             artifacts=artifacts, data_dir=str(artifacts / "run"))
    rt = runtime(optional, model, RaisingFallback())
    assert not rt.components.fallback_scores.any()  # catalog order
