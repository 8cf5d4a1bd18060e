"""`rankly demo`: trained artifacts reused across starts, --retrain, the URLs it prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rankly.engine import cli
from rankly.engine.offline import demo, training

#: A shop and trainers small enough to train in a blink (what is trained is not under test).
SMALL_SHOP = {"n_users": 60, "n_items": 80, "dim": 4, "mean_events": 12, "days": 30}
FAST_TRAINERS = ("pop", "itemknn")


class Started:
    """What `rankly demo` did without serving: train() calls and the servers' environments."""

    def __init__(self) -> None:
        self.trainings = 0
        self.served: list[dict[str, str]] = []


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Started:
    monkeypatch.setattr(demo, "SHOP", SMALL_SHOP)
    monkeypatch.setattr(training, "DEFAULT_TRAINERS", FAST_TRAINERS)
    record = Started()
    real_train = training.train

    def counting_train(*args, **kwargs):
        record.trainings += 1
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train", counting_train)
    monkeypatch.setattr(cli, "_serve", lambda settings, env: record.served.append(env))
    return record


def run_demo(*args: str) -> int:
    return cli.main(["demo", "--quiet", *args])


def test_the_first_start_trains_once_and_serves_the_artifacts(tmp_path, started):
    art = tmp_path / "art"
    assert run_demo("--artifacts", str(art)) == 0
    assert started.trainings == 1
    assert started.served == [{"RANKLY_ARTIFACTS": str(art.resolve()),
                               "RANKLY_HOST": "127.0.0.1", "RANKLY_PORT": "8000"}]
    stored = json.loads((art / demo.FINGERPRINT).read_text())
    assert stored["trained_from"] == demo.wanted(7)


def test_a_second_start_reuses_the_artifacts_without_training(tmp_path, started, capsys):
    art = tmp_path / "art"
    assert run_demo("--artifacts", str(art)) == 0
    capsys.readouterr()
    assert run_demo("--artifacts", str(art)) == 0
    assert started.trainings == 1
    assert len(started.served) == 2
    assert f"reusing the models in {art}" in capsys.readouterr().out


def test_retrain_trains_again_and_swaps_the_artifacts_in(tmp_path, started):
    art = tmp_path / "art"
    assert run_demo("--artifacts", str(art)) == 0
    assert run_demo("--artifacts", str(art), "--retrain") == 0
    assert started.trainings == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no half-written leftovers
    assert demo.stale_reason(art, 7) is None


@pytest.mark.parametrize("change", ["seed", "version", "shop"])
def test_artifacts_trained_from_other_data_or_version_are_retrained(tmp_path, started,
                                                                    monkeypatch, change):
    art = tmp_path / "art"
    assert run_demo("--artifacts", str(art)) == 0
    args = ["--artifacts", str(art)]
    if change == "seed":
        args += ["--seed", "8"]
    elif change == "version":
        monkeypatch.setattr(demo, "__version__", "99.0")
    else:
        monkeypatch.setattr(demo, "SHOP", {**SMALL_SHOP, "n_users": 70})
    assert run_demo(*args) == 0
    assert started.trainings == 2


def test_artifacts_that_do_not_load_are_retrained(tmp_path, started):
    art = tmp_path / "art"
    assert run_demo("--artifacts", str(art)) == 0
    (art / "users" / "user_ids.npy").unlink()
    assert "do not load" in demo.stale_reason(art, 7)
    assert run_demo("--artifacts", str(art)) == 0
    assert started.trainings == 2


def test_a_directory_that_is_not_the_demos_is_left_alone(tmp_path, started, capsys):
    art = tmp_path / "mine"
    art.mkdir()
    (art / "notes.txt").write_text("keep me")
    assert run_demo("--artifacts", str(art)) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert (art / "notes.txt").read_text() == "keep me"
    assert started.trainings == 0 and started.served == []


def test_the_default_directory_is_the_users_cache(tmp_path, started, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert run_demo() == 0
    assert started.served[0]["RANKLY_ARTIFACTS"] == str(tmp_path / "cache" / "rankly" / "demo")
    assert demo.default_dir({}) == Path.home() / ".cache" / "rankly" / "demo"
    assert demo.default_dir({"XDG_CACHE_HOME": "relative"}) == demo.default_dir({})


def test_the_urls_to_try_are_printed(tmp_path, started, capsys):
    assert run_demo("--artifacts", str(tmp_path / "art"), "--port", "8123") == 0
    out = capsys.readouterr().out
    url = "http://127.0.0.1:8123"
    for text in (f"curl '{url}/recommendations?user_id=1&n=5'", f"curl '{url}/items/1/similar",
                 f"curl -X POST {url}/recommendations", '"session_items"', f"{url}/dashboard",
                 f"curl {url}/metrics", f"curl {url}/openapi.json"):
        assert text in out


def test_training_draws_no_progress_when_stderr_is_not_a_terminal(tmp_path, started, capsys):
    assert cli.main(["demo", "--artifacts", str(tmp_path / "art")]) == 0
    err = capsys.readouterr().err
    assert "training" not in err and "\r" not in err


@pytest.mark.parametrize("quiet", [False, True])
def test_training_draws_progress_on_a_terminal_unless_quiet(tmp_path, started, tty_stderr,
                                                            quiet):
    tty_stderr.as_stderr()
    assert cli.main(["demo", "--artifacts", str(tmp_path / "art"),
                     *(["--quiet"] if quiet else [])]) == 0
    text = tty_stderr.output()
    assert ("training" in text) is not quiet
    assert (text == "") is quiet


def test_a_bad_setting_stops_the_demo_before_it_trains(tmp_path, started, capsys,
                                                       monkeypatch):
    monkeypatch.setenv("RANKLY_PIPELINE__SCORERS", "blnd,popular")
    assert run_demo("--artifacts", str(tmp_path / "art")) == 2
    assert "did you mean 'blend'" in capsys.readouterr().err
    assert started.trainings == 0 and started.served == []
    monkeypatch.delenv("RANKLY_PIPELINE__SCORERS")
    monkeypatch.setenv("RANKLY_NO_SUCH_SETTING", "1")
    assert run_demo("--artifacts", str(tmp_path / "art")) == 2
    assert "unknown setting no_such_setting" in capsys.readouterr().err
    assert started.trainings == 0
