"""Settings: defaults < file < environment < overrides, validated, secrets hidden."""

from __future__ import annotations

import pytest

from rankly.engine.config import ConfigError, Secret, load_settings


def test_defaults_without_environment():
    s = load_settings(environ={})
    assert s.store_url == "memory"
    assert (s.limits.n_default, s.limits.n_max) == (10, 100)
    assert s.pipeline.rerankers == ("diversity",)


def test_file_then_environment_override(tmp_path):
    cfg = tmp_path / "rankly.toml"
    cfg.write_text(
        'port = 9000\n[pipeline]\nscorers = ["als", "popular"]\n'
        '[plugins.diversity]\ncap = 2\n[experiments.home]\nvariants = []\n'
    )
    s = load_settings(cfg, environ={"RANKLY_PORT": "9100", "RANKLY_CACHE__TTL_SECONDS": "5"})
    assert s.port == 9100
    assert s.pipeline.scorers == ("als", "popular")
    assert s.cache.ttl_seconds == 5.0
    assert s.plugin_options("diversity") == {"cap": 2}
    assert s.experiments[0]["key"] == "home"


def test_comma_separated_lists_from_environment():
    s = load_settings(environ={"RANKLY_PIPELINE__SCORERS": "category-affinity, popular"})
    assert s.pipeline.scorers == ("category-affinity", "popular")


def test_redis_url_is_an_alias_for_the_store():
    assert load_settings(environ={"REDIS_URL": "redis://h:6379/0"}).store_url == "redis://h:6379/0"


@pytest.mark.parametrize(
    ("environ", "field"),
    [
        ({"RANKLY_PORTT": "1"}, "portt"),
        ({"RANKLY_PORT": "eighty"}, "port"),
        ({"RANKLY_PORT": "-1"}, "port must be in 1..65535"),
        ({"RANKLY_PORT": "70000"}, "port must be in 1..65535"),
        ({"RANKLY_LIMITS__N_MAX": "0"}, "limits.n"),
        ({"RANKLY_CACHE__JITTER": "2"}, "cache.jitter"),
        ({"RANKLY_ACCESS_LOG": "maybe"}, "access_log"),
        ({"RANKLY_CACHE__NOPE": "1"}, "cache.nope"),
    ],
)
def test_bad_settings_name_the_field(environ, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(environ=environ)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_admin_token_never_shows_in_repr():
    s = load_settings(environ={"RANKLY_ADMIN_TOKEN": "hunter2-very-secret"})
    assert isinstance(s.admin_token, Secret)
    assert s.admin_token.reveal() == "hunter2-very-secret"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.admin_token)


def test_process_variables_are_not_settings():
    env = {"RANKLY_DATASETS": "/data", "RANKLY_ARTIFACTS_DIR": "/tmp/a", "RANKLY_PURE_PYTHON": "1"}
    assert load_settings(environ=env) == load_settings(environ={})
