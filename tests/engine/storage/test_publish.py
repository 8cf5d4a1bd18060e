"""Model versions in Redis: publish, list, activate/rollback, safe download, hot swap."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rankly.engine.config import load_settings
from rankly.engine.model import ArtifactError, load_model
from rankly.engine.serving.app import create_app
from rankly.engine.storage import publish
from rankly.engine.storage.publish import activate_version, list_versions, publish_version
from rankly.engine.storage.redis_store import RedisStore

pytestmark = pytest.mark.redis


def settings_for(url, ns, tmp_path, **kw):
    return load_settings(environ={}, store_url=url, namespace=ns, data_dir=tmp_path,
                         deadlines={"store_ms": 250.0, "request_ms": 2000.0},
                         plugins={"redis": {"model_poll_seconds": 0.5}}, **kw)


@pytest.fixture(scope="module")
def second_version(tmp_path_factory, artifact_builder) -> Path:
    return artifact_builder(tmp_path_factory.mktemp("v2") / "v2", seed=11, version="v2")


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="rankly")
    publish.add_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["publish", *argv])
    return args.func(args)


def test_publish_list_activate_and_rollback(redis_url, redis_namespace, redis_artifacts,
                                            second_version, tmp_path, capsys):
    s = settings_for(redis_url, redis_namespace, tmp_path)
    assert asyncio.run(publish_version(s, redis_artifacts)) == "v1"
    assert asyncio.run(publish_version(s, second_version)) == "v2"
    rows = asyncio.run(list_versions(s))
    assert [(r.version, r.active) for r in rows] == [("v1", False), ("v2", True)]
    assert rows[0].n_items == 300 and rows[0].bytes > 0
    asyncio.run(activate_version(s, "v1"))  # rollback: the old version is still there
    assert [r.active for r in asyncio.run(list_versions(s))] == [True, False]
    with pytest.raises(KeyError):
        asyncio.run(activate_version(s, "nope"))


def test_cli_publish_activate_list(redis_url, redis_namespace, redis_artifacts, capsys):
    base = ("--redis", redis_url, "--namespace", redis_namespace)
    assert cli("--artifacts", str(redis_artifacts), *base) == 0
    assert "published and activated model version v1" in capsys.readouterr().out
    assert cli("--list", *base) == 0
    assert "* v1" in capsys.readouterr().out
    assert cli("--activate", "v0", *base) == 1
    assert cli("--activate", "v1", *base) == 0


def test_download_round_trips_every_artifact_file(redis_url, redis_namespace, redis_artifacts,
                                                  tmp_path):
    s = settings_for(redis_url, redis_namespace, tmp_path)
    asyncio.run(publish_version(s, redis_artifacts))

    async def download():
        store = RedisStore(redis_url, s)
        try:
            return await store.versions().download("v1", tmp_path / "copy")
        finally:
            await store.close()

    copy = asyncio.run(download())
    originals = sorted(p.relative_to(redis_artifacts) for p in redis_artifacts.rglob("*.*"))
    assert sorted(p.relative_to(copy) for p in copy.rglob("*.*")) == originals
    for rel in originals:
        assert (copy / rel).read_bytes() == (redis_artifacts / rel).read_bytes()
    assert load_model(copy).version == "v1"


@pytest.mark.parametrize("attack", ["checksum", "path"])
def test_tampered_versions_are_refused(redis_url, redis_namespace, redis_artifacts, tmp_path,
                                       attack):
    s = settings_for(redis_url, redis_namespace, tmp_path)
    asyncio.run(publish_version(s, redis_artifacts))

    async def tamper_and_download():
        store = RedisStore(redis_url, s)
        r, keys = store.background.client, store.keys
        try:
            doc = json.loads(await r.get(keys.version_manifest("v1")))
            if attack == "checksum":
                await r.set(keys.version_blob("v1", 0, 0), b"\x93NUMPY evil")
            else:
                doc["files"][0]["path"] = "../../escape.npy"
                await r.set(keys.version_manifest("v1"), json.dumps(doc))
            return await store.versions().download("v1", tmp_path / "dl" / "v1")
        finally:
            await store.close()

    with pytest.raises(ArtifactError):
        asyncio.run(tamper_and_download())
    assert not (tmp_path / "escape.npy").exists() and not (tmp_path / "dl" / "v1").exists()


def test_version_published_while_serving_is_picked_up_without_failures(
        redis_url, redis_namespace, redis_artifacts, second_version, tmp_path):
    s = settings_for(redis_url, redis_namespace, tmp_path)
    asyncio.run(publish_version(s, redis_artifacts))
    with TestClient(create_app(s)) as c:  # no artifacts: the active version comes from Redis
        assert c.get("/recommendations", params={"user_id": "5"}).json()["model_version"] == "v1"
        published = threading.Thread(target=lambda: asyncio.run(publish_version(s, second_version)))
        published.start()
        versions, codes = set(), []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = c.get("/recommendations", params={"user_id": str(len(codes) % 50 + 1)})
            codes.append(r.status_code)
            versions.add(r.json()["model_version"])
            if "v2" in versions and not published.is_alive():
                break
        published.join()
        assert "v2" in versions and set(codes) == {200}
        assert c.get("/ready").json()["model_version"] == "v2"


def test_redis_down_at_start_serves_the_last_downloaded_version(
        redis_url, redis_namespace, redis_artifacts, spare_redis, tmp_path):
    s = settings_for(redis_url, redis_namespace, tmp_path)
    asyncio.run(publish_version(s, redis_artifacts))
    with TestClient(create_app(s)) as c:
        assert c.get("/ready").json()["model_version"] == "v1"  # downloaded into data_dir
    down = settings_for(spare_redis.url, redis_namespace, tmp_path)
    with TestClient(create_app(down)) as c:
        r = c.get("/recommendations", params={"user_id": "5", "n": 3})
        assert r.status_code == 200 and r.json()["model_version"] == "v1"
        assert c.get("/ready").json()["status"] == "degraded"


def test_the_cli_refuses_a_negative_keep(tmp_path, capsys):
    from rankly.engine import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["publish", "--list", "--keep", "-1"])
    assert exc.value.code == 2
    assert "argument --keep: must be at least 0, got -1" in capsys.readouterr().err
