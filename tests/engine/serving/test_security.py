"""Admin auth, secrets kept out of logs/errors/metrics/repr, and no pickle in model loading."""

from __future__ import annotations

import asyncio
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from rankly.engine.model import ArtifactError, load_model
from rankly.engine.serving.app import create_app
from rankly.engine.storage.opening import open_store
from rankly.engine.storage.redis_client import parse_url, redact

from ..conftest import make_settings

TOKEN = "s3cret-admin-token-9f2c7e"
PASSWORD = "pa55-w0rd-in-url-4d1b"
EXPERIMENT = {"variants": [{"name": "control", "weight": 1},
                           {"name": "treatment", "weight": 1, "scorers": ["popular"]}]}
ADMIN_CALLS = [("get", "/experiments/e1"), ("put", "/experiments/e1"),
               ("post", "/experiments/e1/stop"), ("get", "/experiments/e1/results")]


@pytest.fixture
def admin_client(artifacts):
    with TestClient(create_app(make_settings(artifacts, admin_token=TOKEN))) as c:
        yield c


def _call(client, method, path, headers=None):
    kwargs = {"json": EXPERIMENT} if method == "put" else {}
    return getattr(client, method)(path, headers=headers or {}, **kwargs)


# --- admin routes --------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
def test_admin_routes_without_credentials_are_401(admin_client, method, path):
    r = _call(admin_client, method, path)
    assert r.status_code == 401
    assert r.json()["error"]["field"] == "authorization"


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
@pytest.mark.parametrize("headers", [
    {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"},
    {"authorization": f"Bearer {TOKEN}x"}, {"authorization": f"Bearer {TOKEN[:-1]}"},
    {"authorization": f"Basic {TOKEN}"}, {"x-api-key": TOKEN.upper()},
])
def test_admin_routes_with_wrong_credentials_are_403(admin_client, method, path, headers):
    r = _call(admin_client, method, path, headers)
    expected = 401 if headers.get("authorization", "").startswith("Basic") else 403
    assert r.status_code == expected
    assert TOKEN not in r.text


@pytest.mark.parametrize("headers", [{"authorization": f"Bearer {TOKEN}"},
                                     {"authorization": f"bearer {TOKEN}"},
                                     {"x-api-key": TOKEN}])
def test_admin_routes_accept_the_bearer_token_or_api_key(admin_client, headers):
    assert _call(admin_client, "put", "/experiments/e1", headers).status_code in (200, 201)
    assert _call(admin_client, "get", "/experiments/e1", headers).status_code == 200


def test_admin_routes_are_off_when_no_token_is_configured(client):
    # one status and one message, with or without credentials (#18)
    answers = [_call(client, "put", "/experiments/e1", {"authorization": "Bearer anything"}),
               client.get("/experiments/e1"), client.get("/experiments"),
               client.post("/experiments/e1/stop", headers={"x-api-key": "x"})]
    assert {r.status_code for r in answers} == {403}
    assert len({r.json()["error"]["message"] for r in answers}) == 1
    assert "disabled" in answers[0].json()["error"]["message"]


def test_auth_runs_before_the_body_or_key_is_looked_at(admin_client):
    r = admin_client.put("/experiments/%01", content=b"{not json")
    assert r.status_code == 401


def test_auth_compares_in_constant_time():
    import inspect

    from rankly.engine.http import auth
    assert "hmac.compare_digest" in inspect.getsource(auth.require_admin)


# --- the token never leaks -----------------------------------------------------------------


def test_the_admin_token_never_appears_in_logs_errors_or_metrics(artifacts, caplog):
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(make_settings(artifacts, admin_token=TOKEN))) as c:
        bodies = [
            _call(c, "put", "/experiments/e1", {"authorization": f"Bearer {TOKEN}"}).text,
            _call(c, "get", "/experiments/e1", {"x-api-key": TOKEN + "x"}).text,
            c.get("/experiments/nope", headers={"authorization": f"Bearer {TOKEN}"}).text,
            c.put("/experiments/e2", content=b"[", headers={"x-api-key": TOKEN}).text,
            c.get("/recommendations", params={"user_id": "1"},
                  headers={"authorization": f"Bearer {TOKEN}"}).text,
            c.get("/openapi.json").text,
            c.get("/metrics").text,
            c.get("/dashboard/data").text,
            c.get("/ready").text,
        ]
    for text in [*bodies, caplog.text, *(r.getMessage() for r in caplog.records)]:
        assert TOKEN not in text


def test_the_admin_token_is_not_in_the_repr_of_settings(artifacts):
    settings = make_settings(artifacts, admin_token=TOKEN)
    assert TOKEN not in repr(settings) and TOKEN not in str(settings)
    assert TOKEN not in repr(settings.admin_token) and TOKEN not in f"{settings.admin_token}"
    assert settings.admin_token.reveal() == TOKEN


# --- Redis credentials ---------------------------------------------------------------------


@pytest.mark.parametrize("url", [f"redis://app:{PASSWORD}@127.0.0.1:1/0",
                                 f"rediss://:{PASSWORD}@cache.example:6380/2",
                                 f"redis+cluster://app:{PASSWORD}@h1:7000,h2:7001"])
def test_redis_urls_are_redacted(url):
    assert PASSWORD not in redact(url)
    assert PASSWORD not in repr(parse_url(url))


def test_a_bad_store_url_error_does_not_show_the_password():
    with pytest.raises(Exception) as exc:
        open_store(make_settings(None, store_url=f"mongodb://app:{PASSWORD}@db:27017"))
    assert PASSWORD not in str(exc.value)
    with pytest.raises(ValueError) as exc:
        parse_url(f"redis+cluster://app:{PASSWORD}@not-a-port")
    assert PASSWORD not in str(exc.value)


def test_an_unreachable_redis_with_a_password_is_logged_without_it(artifacts, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"redis://app:{PASSWORD}@127.0.0.1:1/0"  # nothing listens on port 1
    settings = make_settings(artifacts, store_url=url)
    with TestClient(create_app(settings)) as c:
        ready = c.get("/ready")
        recs = c.get("/recommendations", params={"user_id": "1"})
        events = c.post("/events", json={"event_id": "e", "user_id": "1", "item_id": "1",
                                         "type": "view"})
        texts = [ready.text, recs.text, events.text, c.get("/metrics").text]
    assert ready.status_code == 503 and recs.status_code == 200
    for text in [*texts, caplog.text]:
        assert PASSWORD not in text
    assert repr(open_store(settings)).count(PASSWORD) == 0


def test_the_store_url_password_is_not_in_the_repr_of_settings():
    settings = make_settings(None, store_url=f"redis://app:{PASSWORD}@127.0.0.1:6379/0")
    assert PASSWORD not in repr(settings)


# --- no pickle, no code execution when loading models --------------------------------------


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path(_Boom.marker),))


def test_artifacts_with_an_object_array_are_refused_without_unpickling(artifacts, tmp_path):
    crafted = tmp_path / "model"
    shutil.copytree(artifacts, crafted)
    _Boom.marker = str(tmp_path / "pwned")
    titles = np.empty(2, dtype=object)
    titles[:] = [_Boom(), "x"]
    np.save(crafted / "catalog" / "titles.npy", titles, allow_pickle=True)
    with pytest.raises(ArtifactError, match="incomplete artifact"):
        load_model(crafted)
    assert not (tmp_path / "pwned").exists()


def test_a_pickle_disguised_as_npy_is_refused(artifacts, tmp_path):
    crafted = tmp_path / "model"
    shutil.copytree(artifacts, crafted)
    _Boom.marker = str(tmp_path / "pwned")
    (crafted / "users" / "history_items.npy").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ArtifactError):
        load_model(crafted)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.redis
def test_a_tampered_model_version_in_redis_is_refused(redis_server, artifacts, tmp_path):
    from rankly.engine.storage.redis_store import RedisStore
    from rankly.engine.storage.versions import ArtifactError as StoreArtifactError

    url = redis_server.url
    settings = make_settings(None, store_url=url, namespace="sec-tamper")

    async def scenario() -> None:
        store = RedisStore(url, settings)
        try:
            versions = store.versions()
            version = await versions.publish(artifacts, activate=True)
            # flip one byte of the first chunk of the first file
            key = versions.keys.version_blob(version, 0, 0)
            blob = bytearray(await store.background.run(lambda r: r.get(key)))
            blob[-1] ^= 0xFF
            await store.background.run(lambda r: r.set(key, bytes(blob)))
            with pytest.raises(StoreArtifactError, match="checksum"):
                await versions.download(version, tmp_path / "dl")
            assert not (tmp_path / "dl").exists()
        finally:
            await store.close()

    asyncio.run(scenario())
