"""Hypothesis over the parsers: events CSV, settings (env + TOML), ids and Redis key escaping.

Every parser either returns a value or raises its own documented error (``DatasetError``,
``ConfigError``, ``RequestError``): never anything else, whatever the input.
"""

from __future__ import annotations

import csv
import io
import re
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rankly.engine.config import ConfigError, Limits, Settings, load_settings
from rankly.engine.http.validation import ID_PATTERN, RequestError, check_id
from rankly.engine.offline.datasets import DatasetError, load_events_csv
from rankly.engine.storage.keys import MAX_ESCAPED, Keys, escape_id

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

#: Any text, including control characters, surrogates, NULs and very long strings.
nasty_text = st.one_of(
    st.text(st.characters(codec=None), max_size=40),
    st.text(alphabet=st.sampled_from("{}:%#\x00\n\r\t ,\"'\\/*?[]\u2028\ufeff\U0001f600"),
            max_size=40),
    st.builds(lambda c, n: c * n, st.characters(), st.integers(100, 5000)),
)


# --- events CSV ----------------------------------------------------------------------------


def _write(tmp: Path, data: bytes) -> Path:
    path = tmp / "events.csv"
    path.write_bytes(data)
    return path


@FUZZ
@given(data=st.one_of(st.binary(max_size=2000),
                      st.lists(st.lists(nasty_text, max_size=7), max_size=20).map(
                          lambda rows: "\n".join(",".join(r) for r in rows).encode(
                              "utf-8", "surrogatepass"))))
def test_the_events_csv_parser_loads_or_raises_dataset_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), data)
        try:
            ds = load_events_csv(path)
        except DatasetError:
            return
        report = ds.reports[0]
        assert report.loaded + report.malformed == report.rows
        assert len(ds.interactions) == report.loaded


csv_id = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                 max_size=30).map(str.strip).filter(lambda t: t and t.isprintable())
event_row = st.tuples(csv_id, csv_id, st.sampled_from(["view", "click", "purchase", "cart"]),
                      st.integers(946684800, 4102444800))


@FUZZ
@given(rows=st.lists(event_row, min_size=1, max_size=30))
def test_well_formed_events_csv_rows_all_load_with_their_ids(rows):
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["user_id", "item_id", "event_type", "timestamp"])
    writer.writerows(rows)
    with tempfile.TemporaryDirectory() as tmp:
        ds = load_events_csv(_write(Path(tmp), buf.getvalue().encode("utf-8")))
    report = ds.reports[0]
    assert (report.rows, report.loaded, report.malformed) == (len(rows), len(rows), 0)
    assert list(ds.interactions.user_ids) == [r[0] for r in rows]
    assert list(ds.interactions.item_ids) == [r[1] for r in rows]


@pytest.mark.parametrize("user", ["a\x00", "\x00", "a\x1fb", "a\x7fb"])
def test_ids_with_control_characters_are_malformed_rows(tmp_path, user):
    buf = io.StringIO()
    csv.writer(buf).writerows([["user_id", "item_id"], [user, "i1"], ["a", "i2"], ["b", "i3"]])
    ds = load_events_csv(_write(tmp_path, buf.getvalue().encode()))
    assert (ds.reports[0].loaded, ds.reports[0].malformed) == (2, 1)
    assert sorted(ds.interactions.user_ids) == ["a", "b"]


@pytest.mark.parametrize("timestamp", ["1e999", "-1e999", "99999999999999999999999",
                                       "1" * 5000])
def test_an_out_of_range_timestamp_is_a_malformed_row_not_a_crash(tmp_path, timestamp):
    data = f"user_id,item_id,timestamp\nu1,i1,{timestamp}\nu2,i2,1500000000\n" \
           f"u3,i3,1500000001\n".encode()
    ds = load_events_csv(_write(tmp_path, data))
    assert (ds.reports[0].loaded, ds.reports[0].malformed) == (2, 1)


# --- settings ------------------------------------------------------------------------------

_SETTING_NAMES = ["PORT", "WORKERS", "NAMESPACE", "STORE_URL", "ADMIN_TOKEN", "LOG_LEVEL",
                  "ACCESS_LOG", "BLOCKED_PLUGINS", "PLUGINS", "EVENT_TYPES",
                  "LIMITS__N_MAX", "LIMITS__N_DEFAULT", "LIMITS__MAX_BODY_BYTES",
                  "CACHE__TTL_SECONDS", "CACHE__JITTER", "DEADLINES__REQUEST_MS",
                  "RATE_LIMITS__EVENTS_PER_SECOND", "PIPELINE__SCORERS", "NOPE", "LIMITS",
                  "LIMITS__NOPE"]
env_value = st.one_of(st.sampled_from(["", "0", "1", "-1", "1e3", "true", "no", "inf", "nan",
                                       "{}", "[]", "{\"a\": {}}", "a,b", "12abc"]),
                      st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                              max_size=20))


environ = st.dictionaries(st.sampled_from(_SETTING_NAMES).map(lambda k: "RANKLY_" + k),
                          env_value, max_size=6)
toml_scalar = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                        st.booleans(), st.text(max_size=10))
toml_value = st.one_of(toml_scalar, st.lists(toml_scalar, max_size=3))


def _toml(doc: dict) -> str:
    out = []
    for section, body in doc.items():
        if isinstance(body, dict):
            out.append(f"[{section}]")
            out += [f"{k} = {_lit(v)}" for k, v in body.items()]
    return "\n".join([f"{k} = {_lit(v)}" for k, v in doc.items()
                      if not isinstance(v, dict)] + out) + "\n"


def _lit(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_lit(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v) if v == v and abs(v) != float("inf") else "0.0"
    if isinstance(v, str):
        return '"' + "".join(c if c.isalnum() else "" for c in v) + '"'
    return str(v)


toml_doc = st.dictionaries(
    st.sampled_from(["port", "workers", "namespace", "store_url", "blocked_plugins",
                     "limits", "cache", "deadlines", "rate_limits", "bogus"]),
    st.one_of(toml_value, st.dictionaries(
        st.sampled_from(["n_max", "n_default", "ttl_seconds", "jitter", "request_ms",
                         "events_per_second", "max_clients", "bogus"]), toml_value,
        max_size=3)),
    max_size=5)


def _load(env: dict, doc: dict | None = None) -> Settings | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = None
        if doc is not None:
            path = Path(tmp) / "rankly.toml"
            path.write_text(_toml(doc))
        try:
            return load_settings(path, environ=env)
        except ConfigError:
            return None


@FUZZ
@given(env=environ)
def test_settings_from_any_environment_load_or_raise_config_error(env):
    s = _load(env)
    if s is not None:
        assert 1 <= s.limits.n_default <= s.limits.n_max
        assert s.workers >= 0  # 0: one per core with a Redis store (engine/cli.py)


@FUZZ
@given(doc=toml_doc, env=environ)
def test_settings_from_any_toml_file_load_or_raise_config_error(doc, env):
    _load(env, doc)


def test_a_setting_given_both_as_a_value_and_as_a_table_is_a_config_error():
    with pytest.raises(ConfigError):
        load_settings(environ={"RANKLY_LIMITS": "5", "RANKLY_LIMITS__N_MAX": "50"})


@pytest.mark.parametrize("value", ["", "not json", "{\"a\": "])
def test_a_table_setting_that_is_not_json_is_a_config_error(value):
    with pytest.raises(ConfigError):
        load_settings(environ={"RANKLY_PLUGINS": value})


@FUZZ
@given(token=st.text(string.ascii_letters + string.digits + "-_.~+/=", min_size=12,
                     max_size=64))
def test_the_admin_token_never_shows_in_repr_of_settings(token):
    assume(token not in repr(Settings()))  # e.g. "max_events_b" is in there anyway
    s = load_settings(environ={"RANKLY_ADMIN_TOKEN": token})
    assert s.admin_token is not None and s.admin_token.reveal() == token
    assert token not in repr(s) and token not in str(s)


# --- ids through validation ----------------------------------------------------------------

LIMITS = Limits()


@FUZZ
@given(value=st.one_of(nasty_text, st.integers(), st.floats(), st.booleans(), st.none(),
                       st.lists(st.text(max_size=3), max_size=2)))
def test_check_id_accepts_only_short_text_without_controls(value):
    try:
        out = check_id(value, "user_id", LIMITS)
    except RequestError as exc:
        assert exc.status == 422 and exc.field == "user_id" and exc.message
        return
    assert isinstance(value, str) and out == value  # numbers are refused, as the schema says
    assert 1 <= len(out) <= LIMITS.max_id_length
    assert re.fullmatch(ID_PATTERN, out)  # the OpenAPI pattern
    assert not any("\ud800" <= c <= "\udfff" for c in out)  # no lone surrogate


# --- Redis keys ----------------------------------------------------------------------------

_ESCAPED = re.compile(r"[A-Za-z0-9_.\-%]*|#[0-9a-f]{64}")
_HEX = set(string.hexdigits)
any_id = st.one_of(nasty_text, st.text(st.characters(), min_size=1, max_size=300))


def _hash_tag(key: str) -> str | None:
    """The Redis Cluster hash tag: between the first ``{`` and the next ``}``, if non-empty."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1:end] if start >= 0 and end > start + 1 else None


@FUZZ
@given(raw=any_id)
def test_escaped_ids_use_a_safe_alphabet_and_a_bounded_length(raw):
    out = escape_id(raw)
    assert _ESCAPED.fullmatch(out), out
    assert len(out) <= max(MAX_ESCAPED, 65)
    assert not set(out) & set("{}: \t\r\n\x00")


@FUZZ
@given(a=any_id, b=any_id)
def test_distinct_ids_never_share_a_key(a, b):
    assume(a != b)
    keys = Keys("shop")
    assert escape_id(a) != escape_id(b)
    assert keys.user(a, "history") != keys.user(b, "history")
    assert keys.user_tag(a) != keys.user_tag(b)
    assert keys.shared("rc", a) != keys.shared("rc", b)
    assert keys.version_manifest(a) != keys.version_manifest(b)


@FUZZ
@given(raw=any_id, kind=st.sampled_from(["history", "seen", "recs"]))
def test_an_id_never_escapes_its_hash_tag_or_namespace(raw, kind):
    for namespace in ("shop", "shop-2"):
        key = Keys(namespace).user(raw, kind)
        assert key.startswith(namespace + ":{u:")
        assert key.split(":", 1)[0] == namespace
        assert _hash_tag(key) == "u:" + escape_id(raw)  # one slot per user, whatever the id
        assert key.endswith("}:" + kind)
        assert key.count("{") == 1 and key.count("}") == 1
    # tenants never share a key, even when an id spells another namespace's prefix
    assert Keys("shop").user(raw, kind) != Keys("shop-2").user(raw, kind)
    assert not Keys("shop").user(raw, kind).startswith("shop-2:")


@FUZZ
@given(a=any_id)
def test_hashed_and_escaped_ids_cannot_collide(a):
    out = escape_id(a)
    if out.startswith("#"):
        assert len(a.encode("utf-8", "surrogatepass")) * 3 > MAX_ESCAPED // 1 - 2
        assert set(out[1:]) <= _HEX
    else:
        assert "#" not in out


@pytest.mark.parametrize("namespace", ["", "a:b", "a{b}", "x" * 65, "ns with space", "é"])
def test_namespaces_with_key_syntax_are_refused(namespace):
    with pytest.raises(ValueError):
        Keys(namespace)
