"""Artifact files: a model trained again into a directory, and arrays from another model."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from rankly.engine.config import load_settings
from rankly.engine.model import ArtifactError, fingerprint, load_model, save_model
from rankly.engine.offline.demo import synthesize
from rankly.engine.offline.interactions import build_training_data
from rankly.engine.offline.training import train


def _save(out, n_items: int, seed: int) -> None:
    interactions, items = synthesize(n_users=60, n_items=n_items, seed=seed)
    data = build_training_data(interactions, items)
    parts = train(data, ["pop", "ease"], load_settings(environ={}))
    save_model(out, data.catalog, data.users, parts,
               data_fingerprint=fingerprint(data.user_idx, data.item_idx))


def test_a_server_mapping_the_model_survives_a_training_into_its_directory(tmp_path):
    # a process maps the model's arrays (as `rankly serve` does), then the directory is
    # trained again with another catalog: the old files were truncated under the mapping,
    # and the next read killed the process with SIGBUS
    model_dir = tmp_path / "model"
    _save(model_dir, 120, 1)
    script = textwrap.dedent(f"""
        import numpy as np
        from rankly.engine.model import load_model
        model = load_model({str(model_dir)!r})
        weights = model.parts["ease"]["weights"]
        before = float(np.asarray(weights, dtype=np.float64).sum())
        from rankly.engine.offline.demo import synthesize
        from rankly.engine.offline.interactions import build_training_data
        from rankly.engine.offline.training import train
        from rankly.engine.config import load_settings
        from rankly.engine.model import fingerprint, save_model
        interactions, items = synthesize(n_users=60, n_items=40, seed=2)
        data = build_training_data(interactions, items)
        parts = train(data, ["pop", "ease"], load_settings(environ={{}}))
        save_model({str(model_dir)!r}, data.catalog, data.users, parts,
                   data_fingerprint=fingerprint(data.user_idx, data.item_idx))
        after = float(np.asarray(weights, dtype=np.float64).sum())
        assert after == before, (before, after)
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", (run.returncode, run.stderr)
    assert len(load_model(model_dir).catalog) <= 40


def test_arrays_of_another_model_are_refused_by_name(tmp_path):
    _save(tmp_path / "a", 120, 1)
    _save(tmp_path / "b", 40, 2)
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "a", mixed)
    shutil.copytree(tmp_path / "b" / "parts", mixed / "parts", dirs_exist_ok=True)
    with pytest.raises(ArtifactError, match=r"arrays of another model.*parts/ease/"):
        load_model(mixed)
    shutil.copytree(tmp_path / "b" / "catalog", mixed / "catalog", dirs_exist_ok=True)
    with pytest.raises(ArtifactError, match=r"catalog/ holds"):
        load_model(mixed)


def test_no_temporary_file_is_left_behind(tmp_path):
    _save(tmp_path / "m", 60, 3)
    _save(tmp_path / "m", 60, 4)
    assert not [p for p in (tmp_path / "m").rglob(".*") if p.is_file()]
    load_model(tmp_path / "m")
