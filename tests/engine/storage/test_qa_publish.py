"""Publishing model versions and serving them: what a damaged version, ``--keep``, a damaged
local copy, the local cache's size and a restart with Redis down after a rollback do."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from rankly.engine.config import load_settings
from rankly.engine.model import ArtifactError
from rankly.engine.storage import publish
from rankly.engine.storage.publish import (
    activate_version,
    cache_dir,
    list_versions,
    load_serving_model,
    publish_version,
)
from rankly.engine.storage.redis_store import RedisStore

pytestmark = pytest.mark.redis


def settings_for(url, ns, tmp_path, **kw):
    return load_settings(environ={}, store_url=url, namespace=ns, data_dir=tmp_path,
                         deadlines={"store_ms": 250.0, "request_ms": 2000.0}, **kw)


@pytest.fixture(scope="module")
def versions_dir(tmp_path_factory, artifact_builder) -> dict[str, Path]:
    """Four small trained versions, v1..v4."""
    root = tmp_path_factory.mktemp("qa-versions")
    return {f"v{i}": artifact_builder(root / f"v{i}", seed=i, version=f"v{i}")
            for i in range(1, 5)}


def published(s) -> list[str]:
    return [r.version for r in asyncio.run(list_versions(s))]


def active(s) -> str | None:
    return next((r.version for r in asyncio.run(list_versions(s)) if r.active), None)


def start_model(s) -> str:
    """The version a worker started now would serve."""
    async def run():
        store = RedisStore(s.store_url, s)
        try:
            return (await load_serving_model(s, store)).version
        finally:
            await store.close()

    return asyncio.run(run())


def damaged_copy(src: Path, dest: Path, version: str) -> Path:
    shutil.copytree(src, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["version"] = version
    (dest / "manifest.json").write_text(json.dumps(manifest))
    sims = dest / "parts" / "itemknn" / "sims.npy"
    sims.write_bytes(sims.read_bytes()[:100])
    return dest


def test_a_damaged_artifact_directory_is_not_published(redis_url, redis_namespace,
                                                       versions_dir, tmp_path):
    s = settings_for(redis_url, redis_namespace, tmp_path)
    asyncio.run(publish_version(s, versions_dir["v1"]))
    bad = damaged_copy(versions_dir["v2"], tmp_path / "bad", "bad")
    with pytest.raises(ArtifactError):
        asyncio.run(publish_version(s, bad))
    assert published(s) == ["v1"] and active(s) == "v1"


def test_the_cli_exits_1_on_a_damaged_artifact_directory(redis_url, redis_namespace,
                                                         versions_dir, tmp_path, capsys):
    import argparse

    bad = damaged_copy(versions_dir["v2"], tmp_path / "bad", "bad")
    parser = argparse.ArgumentParser(prog="rankly")
    publish.add_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["publish", "--artifacts", str(bad), "--redis", redis_url,
                              "--namespace", redis_namespace])
    assert args.func(args) == 1
    assert "incomplete artifact" in capsys.readouterr().err


def test_keep_zero_keeps_only_the_active_version(redis_url, redis_namespace, versions_dir,
                                                 tmp_path):
    s = settings_for(redis_url, redis_namespace, tmp_path)
    for v in ("v1", "v2", "v3"):
        asyncio.run(publish_version(s, versions_dir[v], keep=0))
    assert published(s) == ["v3"] and active(s) == "v3"


def test_keep_zero_without_activation_keeps_the_new_and_the_active_version(
        redis_url, redis_namespace, versions_dir, tmp_path):
    s = settings_for(redis_url, redis_namespace, tmp_path)
    asyncio.run(publish_version(s, versions_dir["v1"]))
    asyncio.run(publish_version(s, versions_dir["v2"]))
    asyncio.run(activate_version(s, "v1"))  # rolled back: v2 is newer than the active one
    asyncio.run(publish_version(s, versions_dir["v3"], activate=False, keep=0))
    assert published(s) == ["v1", "v3"] and active(s) == "v1"


def test_keep_counts_the_versions_besides_the_active_one(redis_url, redis_namespace,
                                                         versions_dir, tmp_path):
    s = settings_for(redis_url, redis_namespace, tmp_path)
    for v in ("v1", "v2", "v3"):
        asyncio.run(publish_version(s, versions_dir[v], keep=1))
    assert published(s) == ["v2", "v3"]  # the active one and one to roll back to
    asyncio.run(activate_version(s, "v2"))
    asyncio.run(publish_version(s, versions_dir["v4"], activate=False, keep=1))
    assert published(s) == ["v2", "v4"] and active(s) == "v2"


def test_a_damaged_local_copy_is_downloaded_again(redis_url, redis_namespace, versions_dir,
                                                  tmp_path):
    s = settings_for(redis_url, redis_namespace, tmp_path)
    asyncio.run(publish_version(s, versions_dir["v1"]))
    assert start_model(s) == "v1"
    local = cache_dir(s) / "v1" / "parts" / "pop" / "scores.npy"
    local.write_bytes(b"")  # a disk error, a full disk, an operator's mistake
    assert start_model(s) == "v1"
    assert local.read_bytes() == (versions_dir["v1"] / "parts" / "pop" / "scores.npy").read_bytes()


def test_downloaded_versions_do_not_pile_up_in_data_dir(redis_url, redis_namespace,
                                                        versions_dir, tmp_path):
    s = settings_for(redis_url, redis_namespace, tmp_path)
    stale = cache_dir(s) / ".download-stale"  # left by a worker killed mid-download
    stale.mkdir(parents=True)
    (stale / "manifest.json").write_text("{}")
    os.utime(stale, (0, 0))
    for v in ("v1", "v2", "v3", "v4"):
        asyncio.run(publish_version(s, versions_dir[v]))
        assert start_model(s) == v
    kept = sorted(d.name for d in cache_dir(s).iterdir())
    assert len(kept) == publish.LOCAL_KEEP and ".download-stale" not in kept
    assert "v4" in kept and "v1" not in kept


def test_redis_down_at_start_after_a_rollback_serves_the_rolled_back_version(
        redis_url, redis_namespace, versions_dir, spare_redis, tmp_path):
    s = settings_for(redis_url, redis_namespace, tmp_path)
    asyncio.run(publish_version(s, versions_dir["v1"]))
    assert start_model(s) == "v1"
    asyncio.run(publish_version(s, versions_dir["v2"]))
    assert start_model(s) == "v2"  # v2 is the last download
    asyncio.run(activate_version(s, "v1"))  # v2 is bad: roll back
    assert start_model(s) == "v1"
    down = settings_for(spare_redis.url, redis_namespace, tmp_path)
    assert start_model(down) == "v1"


@pytest.mark.parametrize("version", ["..", ".", ".download-x"])
def test_a_version_named_like_a_directory_entry_stays_in_its_own_directory(
        redis_url, redis_namespace, artifact_builder, tmp_path, version):
    s = settings_for(redis_url, redis_namespace, tmp_path)
    other = tmp_path / "models" / "other-namespace" / "v1" / "manifest.json"
    other.parent.mkdir(parents=True)
    other.write_text("{}")  # another tenant's downloaded version on this machine
    asyncio.run(publish_version(s, artifact_builder(tmp_path / "odd", version=version)))
    assert start_model(s) == version
    assert other.exists() and start_model(s) == version
    (copy,) = [d for d in cache_dir(s).iterdir()]
    assert copy.parent == cache_dir(s) and (copy / "manifest.json").exists()


def test_a_copy_another_worker_finished_meanwhile_is_not_replaced(
        redis_url, redis_namespace, versions_dir, tmp_path):
    s = settings_for(redis_url, redis_namespace, tmp_path)
    asyncio.run(publish_version(s, versions_dir["v1"]))
    dest = cache_dir(s) / "v1"
    theirs = {}

    async def run():
        store = RedisStore(s.store_url, s)
        versions = store.versions()
        describe = versions.describe

        async def describe_while_another_worker_downloads(version):
            doc = await describe(version)
            shutil.copytree(versions_dir["v1"], dest)  # the other worker's rename landed
            theirs["inode"] = (dest / "manifest.json").stat().st_ino
            return doc

        versions.describe = describe_while_another_worker_downloads
        try:
            return await publish.fetch_model(versions, "v1", cache_dir(s))
        finally:
            await store.close()

    assert asyncio.run(run()).version == "v1"
    # the other worker may be loading that copy: it is the one left in place
    assert (dest / "manifest.json").stat().st_ino == theirs["inode"]
    assert not [d for d in cache_dir(s).iterdir() if d.name.startswith(".")]


def test_activating_an_unknown_version_says_so_without_quotes(redis_url, redis_namespace,
                                                              capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="rankly")
    publish.add_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["publish", "--activate", "nope", "--redis", redis_url,
                              "--namespace", redis_namespace])
    assert args.func(args) == 1
    assert capsys.readouterr().err == "rankly publish: model version 'nope' is not published\n"


def test_a_version_that_failed_to_load_is_not_downloaded_on_every_poll(tmp_path, monkeypatch):
    """An active version that cannot load (a damaged publish) was downloaded whole again at
    every wake-up; it is tried again only after FAILED_RETRY_S, or when another version is
    activated."""
    from types import SimpleNamespace

    class Versions:
        name = "bad"

        async def active(self):
            return self.name

    versions = Versions()
    fetches = []

    async def fetch(_versions, version, _root):
        fetches.append(version)
        raise ArtifactError(f"{version}: incomplete artifact")

    monkeypatch.setattr(publish, "fetch_model", fetch)
    rt = SimpleNamespace(model=SimpleNamespace(version="good"),
                         store=SimpleNamespace(versions=lambda: versions),
                         settings=load_settings(environ={}, data_dir=tmp_path))
    watcher = publish.ModelWatcher(rt)
    now = [1000.0]
    watcher.clock = lambda: now[0]

    async def scenario():
        with pytest.raises(ArtifactError):
            await watcher.check()
        for _ in range(5):  # the next polls: no download
            assert await watcher.check() is False
        now[0] += publish.FAILED_RETRY_S
        with pytest.raises(ArtifactError):
            await watcher.check()  # tried again after the wait
        versions.name = "other"
        with pytest.raises(ArtifactError):
            await watcher.check()  # another version is tried at once

    asyncio.run(scenario())
    assert fetches == ["bad", "bad", "other"]
