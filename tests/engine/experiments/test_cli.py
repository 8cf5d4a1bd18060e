"""The ``experiments`` CLI commands, driven through a parser built the way engine/cli.py will."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from rankly.engine.experiments import cli
from rankly.engine.experiments.assignment import assign_one, parse_experiment


def run(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="rankly")
    cli.add_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out = io.StringIO()
    return cli.run(args, out), out.getvalue()


def test_sample_size_prints_per_variant_and_duration():
    code, out = run(
        [
            "experiments",
            "sample-size",
            "--baseline",
            "0.05",
            "--mde",
            "0.10",
            "--relative",
            "--daily-traffic",
            "5000",
        ]
    )
    assert code == 0
    assert "per variant: 31234" in out and "expected duration: 13 days" in out


def test_sample_size_json():
    code, out = run(
        ["experiments", "sample-size", "--baseline", "0.05", "--mde", "0.005", "--json"]
    )
    assert code == 0 and json.loads(out)["per_variant"] == 31234


def test_sample_size_bad_input_exits_2(capsys):
    code, _ = run(["experiments", "sample-size", "--baseline", "1.5", "--mde", "0.1"])
    assert code == 2 and "baseline" in capsys.readouterr().err


def test_analyze_json_document():
    code, out = run(
        ["experiments", "analyze", "--arm", "control:20000:1000", "--arm", "b:20000:1300", "--json"]
    )
    doc = json.loads(out)
    assert code == 0 and doc["verdict"] == "significant_win"
    assert doc["arms"][1]["conversions"] == 1300


def test_analyze_text_with_weights():
    code, out = run(
        [
            "experiments",
            "analyze",
            "--arm",
            "control:2000:100",
            "--arm",
            "b:8000:420",
            "--weights",
            "20,80",
        ]
    )
    assert code == 0 and "verdict:" in out and "b vs control" in out and "ALERT" not in out


def test_analyze_invalid_counts_exit_2(capsys):
    code, _ = run(["experiments", "analyze", "--arm", "control:10:50", "--arm", "b:10:5"])
    assert code == 2 and "control" in capsys.readouterr().err


def test_analyze_rejects_malformed_arm():
    with pytest.raises(SystemExit):
        run(["experiments", "analyze", "--arm", "control:ten:5", "--arm", "b:10:5"])


def test_assign_prints_the_same_variant_as_the_library():
    code, out = run(
        [
            "experiments",
            "assign",
            "--experiment",
            "exp",
            "--user",
            "u42",
            "--weights",
            "30,70",
            "--json",
        ]
    )
    experiment = parse_experiment(
        {
            "key": "exp",
            "variants": [{"name": "control", "weight": 30}, {"name": "treatment", "weight": 70}],
        }
    )
    expected = assign_one(experiment, "u42")
    assert code == 0 and expected is not None
    assert json.loads(out)["variant"] == expected.variant_name


def test_assign_with_seed_matches_growthbook_bucket():
    # cases.json: hash("feature", "123", 2) = 0.5231 -> second variant of a 10/90 split.
    code, out = run(
        [
            "experiments",
            "assign",
            "--experiment",
            "x",
            "--user",
            "123",
            "--seed",
            "feature",
            "--weights",
            "0.1,0.9",
            "--variants",
            "v0,v1",
        ]
    )
    assert code == 0 and out.strip() == "v1"


def test_no_subcommand_exits_2():
    code, _ = run(["experiments"])
    assert code == 2
