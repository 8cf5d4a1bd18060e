"""Damaged artifact directories are refused with ArtifactError, whatever the damage."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankly.engine.model import ArtifactError, load_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory, artifact_builder) -> Path:
    return artifact_builder(tmp_path_factory.mktemp("qa-model") / "m", version="m1")


def copy_of(trained: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(trained, tmp_path / "copy"))


@pytest.mark.parametrize("rel", ["parts/pop/scores.npy", "catalog/item_ids.npy",
                                 "users/history_items.npy"])
def test_an_empty_array_file_is_an_artifact_error(trained, tmp_path, rel):
    model = copy_of(trained, tmp_path)
    (model / rel).write_bytes(b"")
    with pytest.raises(ArtifactError, match="incomplete artifact"):
        load_model(model)


def test_a_directory_in_place_of_an_array_is_an_artifact_error(trained, tmp_path):
    model = copy_of(trained, tmp_path)
    (model / "parts" / "pop" / "scores.npy").unlink()
    (model / "parts" / "pop" / "scores.npy").mkdir()
    with pytest.raises(ArtifactError, match="incomplete artifact"):
        load_model(model)


@pytest.mark.parametrize("text", ["[]", '{"format": 1}', '{"format": 1, "version": "x", '
                                  '"parts": {"pop": {}}}'])
def test_a_manifest_of_the_wrong_shape_is_an_artifact_error(trained, tmp_path, text):
    model = copy_of(trained, tmp_path)
    (model / "manifest.json").write_text(text)
    with pytest.raises(ArtifactError):
        load_model(model)
