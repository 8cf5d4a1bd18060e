"""Output paths of the offline commands are checked before the work: no long run is thrown
away on a path that cannot be written."""

from __future__ import annotations

import pytest

from rankly.engine import cli
from rankly.engine.offline import evaluation, training

from .cli_helpers import grid_csv, one_error_line, write_csv


@pytest.mark.parametrize("where", ["missing/dir/r.html", "."])
def test_evaluate_checks_the_html_path_before_evaluating(tmp_path, capsys, monkeypatch, where):
    events = grid_csv(tmp_path / "e.csv")
    monkeypatch.setattr(evaluation, "evaluate",
                        lambda *a, **k: pytest.fail("evaluated before checking --html"))
    target = tmp_path / where
    assert cli.main(["evaluate", "--interactions", str(events), "--models", "pop",
                     "--quiet", "--html", str(target)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: --html {target}: ")


@pytest.mark.parametrize("where", ["file", "file/sub"])
def test_train_checks_the_out_directory_before_training(tmp_path, capsys, monkeypatch, where):
    events = grid_csv(tmp_path / "e.csv")
    (tmp_path / "file").write_text("not a directory\n")
    monkeypatch.setattr(training, "train",
                        lambda *a, **k: pytest.fail("trained before checking --out"))
    out = tmp_path / where
    assert cli.main(["train", "--interactions", str(events), "--out", str(out),
                     "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: --out {out}: ")


def test_train_refuses_an_empty_out_path(tmp_path, capsys, monkeypatch):
    # Path("") is the current directory: the model landed among the user's files
    events = grid_csv(tmp_path / "e.csv")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--interactions", str(events), "--out", "", "--quiet"]) == 2
    assert one_error_line(capsys.readouterr().err) == "error: --out is empty"
    assert not (tmp_path / "manifest.json").exists()


def test_train_takes_integer_ids_past_64_bits(tmp_path, capsys):
    # ids that all look like integers sort numerically; one past int64 raised OverflowError
    events = write_csv(tmp_path / "e.csv", ["u,12345678901234567890123,1", "u,7,2", "v,7,3",
                                       "v,8,4", "w,8,5", "w,12345678901234567890123,6"])
    assert cli.main(["train", "--interactions", str(events), "--out", str(tmp_path / "m"),
                     "--trainers", "pop", "--quiet"]) == 0
    from rankly.engine.model import load_model

    ids = [str(i) for i in load_model(tmp_path / "m").catalog.item_ids]
    assert sorted(ids) == sorted(["12345678901234567890123", "7", "8"])


def test_an_interrupted_command_is_one_line_and_the_sigint_status(tmp_path, capsys,
                                                                   monkeypatch):
    events = grid_csv(tmp_path / "e.csv")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", interrupted)
    assert cli.main(["train", "--interactions", str(events), "--out", str(tmp_path / "m"),
                     "--quiet"]) == 130
    assert one_error_line(capsys.readouterr().err) == "rankly train: interrupted"


def test_datasets_inspect_into_a_closed_pipe_ends_quietly(tmp_path):
    import subprocess
    import sys

    events = write_csv(tmp_path / "e.csv", [f"u{u},{i},{10 * u + i}" for u in range(50)
                                       for i in range(4)])
    # the reader takes nothing and goes away before the command writes
    reader = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.close()"],
                              stdin=subprocess.PIPE)
    reader.wait(timeout=30)
    run = subprocess.run([sys.executable, "-m", "rankly.engine.cli", "datasets", "inspect",
                          "--interactions", str(events)], stdout=reader.stdin,
                         stderr=subprocess.PIPE, text=True, timeout=120)
    reader.stdin.close()
    assert run.returncode == 141, run.stderr
    assert "Broken pipe" not in run.stderr and "Traceback" not in run.stderr


def test_evaluate_refuses_an_empty_html_path(tmp_path, capsys, monkeypatch):
    events = grid_csv(tmp_path / "e.csv")
    monkeypatch.setattr(evaluation, "evaluate",
                        lambda *a, **k: pytest.fail("evaluated with an empty --html"))
    assert cli.main(["evaluate", "--interactions", str(events), "--models", "pop",
                     "--quiet", "--html", ""]) == 2
    assert one_error_line(capsys.readouterr().err) == "error: --html is empty"
