"""`rankly train`: default trainers, artifact round trip, summary, bad input."""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pytest

from rankly.engine import api, cli
from rankly.engine.config import Settings
from rankly.engine.model import load_model
from rankly.engine.offline import training
from rankly.engine.offline.interactions import Interactions, build_training_data
from rankly.engine.plugins import PluginError, make_plugin_manager
from rankly.plugins.models import als, ease, itemknn, popularity
from rankly.plugins.scorers import blend

PLUGINS = (popularity, itemknn, ease, als, blend)


def _csv(tmp_path):
    rng = np.random.default_rng(1)
    lines = ["user_id,item_id,event_type,timestamp"]
    for u in range(40):
        for t, i in enumerate(rng.choice(30, 8, replace=False)):
            lines.append(f"u{u},i{i},{'purchase' if t % 4 == 0 else 'view'},{t * 100 + u}")
    path = tmp_path / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_always_includes_pop_first():
    data = build_training_data(Interactions(
        np.array(["a", "b"]), np.array(["x", "y"]), np.ones(2, np.float32), np.arange(2)))
    pm = make_plugin_manager(load_entrypoints=False, extra=PLUGINS)
    parts = training.train(data, ["itemknn"], Settings(), pm=pm)
    assert [p.name for p in parts] == ["pop", "itemknn"]
    assert all("seconds" in p.metrics for p in parts)


def test_default_trainers_write_a_loadable_artifact(tmp_path, monkeypatch):
    pm = make_plugin_manager(load_entrypoints=False, extra=PLUGINS)
    monkeypatch.setattr(training, "make_plugin_manager", lambda *a, **k: pm)
    parser = argparse.ArgumentParser()
    training.add_arguments(parser)
    args = parser.parse_args(["--interactions", str(_csv(tmp_path)), "--out",
                              str(tmp_path / "model")])
    out = io.StringIO()
    assert training.run(args, out=out) == 0
    model = load_model(tmp_path / "model")
    assert set(model.parts) == {"pop", "itemknn", "ease", "blend"}
    assert model.manifest["info"]["recommended_pipeline"]["scorers"][0] == "blend"
    assert "model written to" in out.getvalue() and "ease" in out.getvalue()


def test_train_fails_clearly_on_a_mostly_malformed_file(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,event_type\nu,i,view\nu,i,zap\nu,i,zap\n")
    parser = argparse.ArgumentParser()
    training.add_arguments(parser)
    args = parser.parse_args(["--interactions", str(bad), "--out", str(tmp_path / "m")])
    assert training.run(args) == 2
    assert "malformed" in capsys.readouterr().err


def test_the_cli_validates_on_the_shape_asked_for_and_reports_why(tmp_path, tty_stderr):
    tty_stderr.as_stderr()
    out = tmp_path / "model"
    assert cli.main(["train", "--quiet", "--validation", "last", "--interactions",
                     str(_csv(tmp_path)), "--out", str(out)]) == 0
    assert "training" not in tty_stderr.output()  # --quiet: no bar even on a terminal
    params = load_model(out).params("blend")
    assert params["validation"] == "last" and params["shapes"] == ["last"]


def test_the_validation_flag_tunes_the_neighbour_count_on_that_shape(tmp_path):
    """`rankly train --validation last` reaches item-kNN too: its report says which hold-out
    chose the neighbour count, and the served part holds the chosen count."""
    parser = argparse.ArgumentParser()
    training.add_arguments(parser)
    out = tmp_path / "model"
    args = parser.parse_args(["--validation", "last", "--quiet", "--interactions",
                              str(_csv(tmp_path)), "--out", str(out)])
    printed = io.StringIO()
    assert training.run(args, out=printed) == 0
    assert "neighbours on the last hold-out" in printed.getvalue()
    assert load_model(out).params("itemknn")["neighbours"] in (25, 50, 100, 200)


def test_the_cli_refuses_an_unknown_validation_shape(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--validation", "sideways", "--interactions",
                  str(_csv(tmp_path)), "--out", str(tmp_path / "model")])
    assert exc.value.code == 2 and "--validation" in capsys.readouterr().err


def test_a_trainer_that_refuses_the_data_is_skipped_with_a_note(tmp_path, capsys):
    """EASE over a catalog above its limit raises DataRefused: the other parts are served."""
    data = build_training_data(Interactions(
        np.array(["a", "a", "b", "b"]), np.array(["x", "y", "y", "z"]),
        np.ones(4, np.float32), np.arange(4)))
    pm = make_plugin_manager(load_entrypoints=False, extra=PLUGINS)
    parts = training.train(data, ["itemknn", "ease"], Settings(),
                           options={"ease": {"max_items": 2}}, pm=pm)
    assert [p.name for p in parts] == ["pop", "itemknn"]
    assert "skipped ease: ease: 3 items exceed max_items=2" in capsys.readouterr().err


@pytest.mark.parametrize("key,value,named", [
    ("RANKLY_PLUGINS__BLEND__MIXXES", "[0.3]", "no such name 'mixxes'; did you mean 'mixes'"),
    ("RANKLY_PLUGINS__BLENDD__MIXES", "[0.3]", "no such name 'blendd'; did you mean 'blend'"),
    ("RANKLY_PLUGINS__BLEND__MAX_LOSS", "abc", "plugins.blend.max_loss: expected float"),
    ("RANKLY_PLUGINS__ITEMKNN__NEIGHBOURS", "x", "plugins.itemknn.neighbours: expected int"),
    ("RANKLY_PLUGINS__BLEND__CRITERION", "x", "criterion must be one of"),
    ("RANKLY_PLUGINS__BLEND__MIXES", "[0.3,abc]", "mixes must be a list of numbers"),
    ("RANKLY_PLUGINS__EASE__LOW_LAMBDA_SHARE", "2", "low_lambda_share must be in [0, 1)"),
])
def test_a_bad_option_value_fails_training_and_names_the_option(tmp_path, capsys, monkeypatch,
                                                                key, value, named):
    """A misspelt section or option key, a value of the wrong type, or one a trainer cannot
    use is a configuration error, not data the trainer refuses: `rankly train` exits 2 with
    the message and writes no model (strict, as `rankly serve` is)."""
    monkeypatch.setenv(key, value)
    out = tmp_path / "model"
    assert cli.main(["train", "--quiet", "--interactions", str(_csv(tmp_path)),
                     "--out", str(out)]) == 2
    assert named in capsys.readouterr().err
    assert not (out / "manifest.json").exists()


def test_options_given_to_train_are_checked_against_what_the_trainer_declared():
    data = build_training_data(Interactions(
        np.array(["a", "b"]), np.array(["x", "y"]), np.ones(2, np.float32), np.arange(2)))
    pm = make_plugin_manager(load_entrypoints=False, extra=PLUGINS)
    with pytest.raises(ValueError, match="no such name 'neighbors'; did you mean 'neighbours'"):
        training.train(data, ["itemknn"], Settings(), options={"itemknn": {"neighbors": 5}},
                       pm=pm)


def test_a_misspelt_trainer_name_fails_with_a_close_match(tmp_path, capsys):
    assert cli.main(["train", "--quiet", "--trainers", "blnd", "--interactions",
                     str(_csv(tmp_path)), "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert "no trainers named 'blnd'; did you mean 'blend'?" in err


class _Raising:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def fit(self, data, options):
        raise self.exc


class _ThirdPartyTrainers:
    """A plugin as a team ships one: only rankly.engine.api, its trainers registered by hook."""

    @api.hookimpl
    def register_trainers(self, register):
        register("refuser", _Raising(api.DataRefused("refuser: needs 1000 users, got 2")))
        register("broken", _Raising(ValueError("broken: alpha must be > 0")))
        register("buggy", _Raising(KeyError("factors")))


def test_a_plugin_trainer_that_raises_data_refused_is_skipped_and_any_other_error_fails(capsys):
    data = build_training_data(Interactions(
        np.array(["a", "b"]), np.array(["x", "y"]), np.ones(2, np.float32), np.arange(2)))
    pm = make_plugin_manager(load_entrypoints=False, extra=(*PLUGINS, _ThirdPartyTrainers()))
    parts = training.train(data, ["refuser", "itemknn"], Settings(), pm=pm)
    assert [p.name for p in parts] == ["pop", "itemknn"]
    assert "skipped refuser: refuser: needs 1000 users, got 2" in capsys.readouterr().err
    with pytest.raises(ValueError, match="broken: alpha must be > 0"):
        training.train(data, ["broken"], Settings(), pm=pm)


def test_a_plugin_trainer_with_a_bug_is_named_in_one_line(tmp_path, capsys, monkeypatch):
    data = build_training_data(Interactions(
        np.array(["a", "b"]), np.array(["x", "y"]), np.ones(2, np.float32), np.arange(2)))
    pm = make_plugin_manager(load_entrypoints=False, extra=(*PLUGINS, _ThirdPartyTrainers()))
    with pytest.raises(PluginError, match="trainer 'buggy' failed: KeyError: 'factors'"):
        training.train(data, ["buggy"], Settings(), pm=pm)
    # through the command: exit 2, that line, no traceback
    monkeypatch.setattr(training, "make_plugin_manager", lambda *a, **k: pm)
    assert cli.main(["train", "--quiet", "--trainers", "buggy", "--interactions",
                     str(_csv(tmp_path)), "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert "trainer 'buggy' failed: KeyError: 'factors'" in err and "Traceback" not in err
    assert not (tmp_path / "model").exists()


def test_train_weighs_the_custom_event_types_of_its_settings(tmp_path):
    # the server accepts and weighs a type declared in [event_types]; the export of its log
    # trains with that weight instead of skipping those rows
    lines = (_csv(tmp_path).read_text().splitlines()
             + [f"u{u},i{u % 30},share,{10_000 + u}" for u in range(40)])
    (tmp_path / "events.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "rankly.toml").write_text("[event_types]\nshare = 2.0\n")
    assert cli.main(["train", "--quiet", "--interactions", str(tmp_path / "events.csv"),
                     "--config", str(tmp_path / "rankly.toml"), "--out",
                     str(tmp_path / "model")]) == 0
    reports = json.loads((tmp_path / "model" / "manifest.json").read_text())["info"][
        "load_reports"]
    assert f"{len(lines) - 1} of {len(lines) - 1} rows loaded" in reports[0], reports
    # --event-weights still wins over the settings
    assert cli.main(["train", "--quiet", "--interactions", str(tmp_path / "events.csv"),
                     "--config", str(tmp_path / "rankly.toml"), "--event-weights", "share=0",
                     "--out", str(tmp_path / "model2")]) == 0


class _Returning:
    def __init__(self, part):
        self.part = part

    def fit(self, data, options):
        return self.part


class _MalformedTrainers:
    @api.hookimpl
    def register_trainers(self, register):
        register("none", _Returning(None))
        register("listy", _Returning(api.ModelPart("listy", {}, [np.zeros(2)])))
        register("npparams", _Returning(api.ModelPart("npparams", {"alpha": np.float32(0.5)},
                                                      {"w": np.zeros(2)})))
        register("usurper", _Returning(api.ModelPart("pop", {}, {"w": np.zeros(2)})))


@pytest.mark.parametrize(("trainer", "problem"), [
    ("none", "returned NoneType, not a ModelPart"),
    ("listy", "returned arrays that are not NumPy arrays by name"),
    ("npparams", "returned params or metrics that are not JSON"),
    ("usurper", "returned a part named 'pop', which trainer 'pop' already wrote"),
])
def test_a_malformed_part_is_named_in_one_line_before_anything_is_written(
        tmp_path, capsys, monkeypatch, trainer, problem):
    pm = make_plugin_manager(load_entrypoints=False, extra=(*PLUGINS, _MalformedTrainers()))
    monkeypatch.setattr(training, "make_plugin_manager", lambda *a, **k: pm)
    assert cli.main(["train", "--quiet", "--trainers", trainer, "--interactions",
                     str(_csv(tmp_path)), "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert f"trainer {trainer!r} {problem}" in err and "Traceback" not in err
    assert not (tmp_path / "model").exists()


def test_events_that_weigh_nothing_enter_no_history_and_no_model(tmp_path):
    # an exported log with its impressions (weight 0 by default): they are not interest,
    # as the serving projections leave them out of the online history
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,event_type,timestamp\n"
                    "u1,a,click,100\nu1,b,impression,101\nu1,c,impression,102\n"
                    "u2,a,impression,100\nu2,b,purchase,103\nu3,c,impression,104\n")
    from rankly.engine.offline import datasets

    data = build_training_data(datasets.load(path, event_weights={"impression": 0.0})
                               .interactions)
    history = {data.users.user_ids[u]: [data.catalog.item_ids[i] for i in
                                        data.users.history_items[data.users.history_indptr[u]:
                                                                 data.users.history_indptr[u + 1]]]
               for u in range(len(data.users))}
    assert history == {"u1": ["a"], "u2": ["b"]}  # u3 only saw an impression
    assert set(data.catalog.item_ids) == {"a", "b", "c"}  # c is still a catalog item
    assert data.binary_matrix().nnz == 2 and len(data.item_idx) == 2


def test_the_summary_suggests_the_default_pipeline_only_when_its_parts_were_trained(tmp_path):
    data = build_training_data(Interactions(
        np.array(["a", "b", "a"]), np.array(["x", "y", "y"]), np.ones(3, np.float32),
        np.arange(3)))
    pm = make_plugin_manager(load_entrypoints=False, extra=PLUGINS)
    parts = training.train(data, ["itemknn"], Settings(), pm=pm)
    text = training.summary(tmp_path, data, parts, 1.0)
    assert "pipeline.candidates = ['blend'" not in text
    assert "the default one needs blend and ease" in text and "itemknn, pop" in text
