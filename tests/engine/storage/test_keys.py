"""The Redis key schema: escaping, isolation between users/namespaces, one slot per user."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from rankly.engine.storage.keys import MAX_ESCAPED, Keys, check_namespace, escape_id

ids = st.text(min_size=0, max_size=300) | st.sampled_from(
    ["", "{", "}", ":", "{u:1}", "1}:{u:2", "%7B", "#", "a" * 500, "u\x00", "\u2603", "x:recs"])
namespaces = st.from_regex(r"[A-Za-z0-9_.\-]{1,16}", fullmatch=True)
USER_KINDS = ("history", "seen", "recs")


@given(ids)
def test_escaped_id_has_no_key_syntax(raw: str) -> None:
    out = escape_id(raw)
    assert not set(out) & set("{}: \t\r\n")
    assert out.isascii() and out.isprintable()
    assert len(out) <= MAX_ESCAPED + 1


@given(ids, ids)
def test_escape_is_injective(a: str, b: str) -> None:
    if a != b:
        assert escape_id(a) != escape_id(b)


@given(ids, ids, st.sampled_from(USER_KINDS))
def test_no_user_id_addresses_another_users_keys(a: str, b: str, kind: str) -> None:
    keys = Keys("shop")
    if a != b:
        assert keys.user(a, kind) != keys.user(b, kind)
        assert keys.user_tag(a) != keys.user_tag(b)
    assert keys.user(a, kind) not in {keys.user(b, k) for k in USER_KINDS if k != kind}


@given(ids)
def test_every_key_of_a_user_is_in_one_slot(uid: str) -> None:
    keys = Keys("shop")
    slots = {key_slot(keys.user(uid, k).encode()) for k in USER_KINDS}
    assert len(slots) == 1
    assert keys.user(uid, "recs").count("{") == 1  # the hash tag is the only brace pair


@given(namespaces, namespaces, ids, ids)
@settings(max_examples=300)
def test_namespaces_never_share_keys(ns1: str, ns2: str, a: str, b: str) -> None:
    if ns1 != ns2:
        k1, k2 = Keys(ns1), Keys(ns2)
        assert k1.user(a, "recs") != k2.user(b, "recs")
        assert k1.shared("rc", a) != k2.shared("rc", b)
        assert k1.active_version() != k2.active_version()


@given(ids, ids)
def test_versions_are_escaped_and_single_slot(v1: str, v2: str) -> None:
    keys = Keys("shop")
    assert key_slot(keys.version_manifest(v1).encode()) == key_slot(
        keys.version_blob(v1, 3, 7).encode())
    if v1 != v2:
        assert keys.version_manifest(v1) != keys.version_manifest(v2)


def test_long_ids_are_hashed_and_still_distinct() -> None:
    a, b = "x" * 1000, "x" * 999 + "y"
    assert escape_id(a).startswith("#") and escape_id(a) != escape_id(b)
    assert escape_id("#abc") != escape_id("abc")


@pytest.mark.parametrize("bad", ["", "a:b", "a{b}", "x" * 65, "sp ace", "ü"])
def test_bad_namespaces_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        check_namespace(bad)


def test_kinds_are_code_constants() -> None:
    with pytest.raises(ValueError):
        Keys("shop").user("1", "a:b")
