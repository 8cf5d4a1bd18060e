"""Output paths of the offline commands are checked before the work: no long run is thrown
away on a path that cannot be written."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankly.engine import cli
from rankly.engine.offline import evaluation, training


def _csv(path: Path, rows: list[str], header: str = "user_id,item_id,timestamp") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines()
             if line and " INFO " not in line and "rows loaded" not in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("where", ["missing/dir/r.html", "."])
def test_evaluate_checks_the_html_path_before_evaluating(tmp_path, capsys, monkeypatch, where):
    events = _csv(tmp_path / "e.csv", [f"u{u},{i},{10 * u + i}" for u in range(4)
                                       for i in range(4)])
    monkeypatch.setattr(evaluation, "evaluate",
                        lambda *a, **k: pytest.fail("evaluated before checking --html"))
    target = tmp_path / where
    assert cli.main(["evaluate", "--interactions", str(events), "--models", "pop",
                     "--quiet", "--html", str(target)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: --html {target}: ")


@pytest.mark.parametrize("where", ["file", "file/sub"])
def test_train_checks_the_out_directory_before_training(tmp_path, capsys, monkeypatch, where):
    events = _csv(tmp_path / "e.csv", [f"u{u},{i},{10 * u + i}" for u in range(4)
                                       for i in range(4)])
    (tmp_path / "file").write_text("not a directory\n")
    monkeypatch.setattr(training, "train",
                        lambda *a, **k: pytest.fail("trained before checking --out"))
    out = tmp_path / where
    assert cli.main(["train", "--interactions", str(events), "--out", str(out),
                     "--quiet"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: --out {out}: ")


def test_train_refuses_an_empty_out_path(tmp_path, capsys, monkeypatch):
    # Path("") is the current directory: the model landed among the user's files
    events = _csv(tmp_path / "e.csv", [f"u{u},{i},{10 * u + i}" for u in range(4)
                                       for i in range(4)])
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--interactions", str(events), "--out", "", "--quiet"]) == 2
    assert _one_error_line(capsys.readouterr().err) == "error: --out is empty"
    assert not (tmp_path / "manifest.json").exists()
