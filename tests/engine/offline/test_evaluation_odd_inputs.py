"""`rankly evaluate` on data that leaves nothing to judge: one line and exit 2, not a
traceback or an empty table."""

from __future__ import annotations

import numpy as np
import pytest

from rankly.engine import cli
from rankly.engine.offline import evaluation
from rankly.engine.offline.interactions import Interactions

from .cli_helpers import grid_csv, one_error_line, write_csv


def test_evaluate_refuses_a_temporal_split_that_leaves_nothing_to_train_on(tmp_path, capsys):
    # every event at one time: the cut is that time and every event falls after it
    events = write_csv(tmp_path / "e.csv", ["u,1,5", "u,2,5", "v,1,5", "v,3,5"])
    assert cli.main(["evaluate", "--interactions", str(events), "--split", "temporal",
                     "--models", "pop,served", "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "temporal split leaves no events to train on" in line and "user-last" in line


def test_evaluate_refuses_a_split_with_no_user_to_evaluate(tmp_path, capsys):
    # one event per user: user-last keeps them all in train, and no user is left to judge
    events = write_csv(tmp_path / "e.csv", ["u,1,1", "v,2,2", "w,1,3"])
    assert cli.main(["evaluate", "--interactions", str(events), "--split", "user-last",
                     "--models", "pop", "--quiet"]) == 2
    assert "no test user has a relevant item" in one_error_line(capsys.readouterr().err)


def test_evaluate_refuses_a_relevance_filter_that_keeps_no_event(tmp_path, capsys):
    events = grid_csv(tmp_path / "e.csv")
    assert cli.main(["evaluate", "--interactions", str(events), "--split", "user-last",
                     "--models", "pop", "--quiet", "--min-weight", "inf"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "no test user has a relevant item" in line and "--min-weight inf" in line


def test_evaluate_refuses_relevant_events_on_data_without_event_types(tmp_path, capsys):
    # the filter used to be ignored: every test event counted, and the table looked normal
    events = grid_csv(tmp_path / "e.csv")
    assert cli.main(["evaluate", "--interactions", str(events), "--split", "user-last",
                     "--models", "pop", "--quiet", "--relevant-events", "purchase"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--relevant-events" in line and "no event types" in line


def test_evaluate_refuses_relevant_event_types_absent_from_the_test_events(tmp_path, capsys):
    rows = [f"u{u},{i},view,{10 * u + i}" for u in range(4) for i in range(4)]
    events = write_csv(tmp_path / "e.csv", rows, "user_id,item_id,event_type,timestamp")
    assert cli.main(["evaluate", "--interactions", str(events), "--split", "user-last",
                     "--models", "pop", "--quiet", "--relevant-events", "purchse"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "'purchse'" in line and "view" in line


def test_evaluate_refuses_an_empty_model_list(tmp_path, capsys):
    events = grid_csv(tmp_path / "e.csv")
    assert cli.main(["evaluate", "--interactions", str(events), "--models", ",",
                     "--quiet"]) == 2
    assert "--models names no model" in one_error_line(capsys.readouterr().err)


def test_evaluate_names_a_negative_seed(tmp_path, capsys):
    # it reached NumPy's sampler, whose message named no option
    events = grid_csv(tmp_path / "e.csv")
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", "--interactions", str(events), "--models", "pop", "--quiet",
                  "--max-users", "1", "--seed", "-5"])
    assert exc.value.code == 2
    assert "argument --seed: must be at least 0, got -5" in capsys.readouterr().err


def test_the_split_help_says_how_much_user_last_holds_out(capsys):
    # it said "each user's last event", while the split holds out the last fifth
    rows = [(f"u{u}", f"i{i}", 10 * u + i) for u in range(2) for i in range(10)]
    users, items, times = (np.array(c) for c in zip(*rows, strict=True))
    _, test = evaluation.split_user_last(Interactions(
        users.astype(str), items.astype(str), np.ones(users.size, np.float32),
        times.astype(np.int64)))
    assert len(test) == 4
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "each user's last 20% of events" in help_text
