"""Event logs that are damaged or odd: `rankly off-policy` and `rankly train-ranker` name the
line and exit 2, or leave the request out and say so; never a traceback or a wrong number."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rankly.engine import cli
from rankly.engine.feedback.offpolicy import evaluate, json_ready, render
from rankly.engine.feedback.slates import LogError, load_feedback


def impression(rid: str, pos: int, item: str, user: str = "u1", ts: float = 1.76e9,
               **ctx) -> dict:
    return {"id": f"imp:{rid}:{pos}", "u": user, "i": item, "t": "impression", "ts": ts,
            "r": rid, "c": {"position": pos, "propensity": 1.0, **ctx}}


def click(rid: str | None, item: str, user: str = "u1", ts: float = 1.76e9 + 5) -> dict:
    doc = {"id": f"c:{rid}:{item}", "u": user, "i": item, "t": "click", "ts": ts}
    if rid:
        doc["r"] = rid
    return doc


def slate(rid: str, items: list[str], user: str = "u1", ts: float = 1.76e9) -> list[dict]:
    return [impression(rid, k, a, user, ts) for k, a in enumerate(items)]


def good_lines() -> list[str]:
    docs = slate("r1", ["a", "b", "c"]) + [click("r1", "b")] + slate("r2", ["c", "a", "b"],
                                                                     ts=1.76e9 + 60)
    return [json.dumps(d) for d in docs]


def write(tmp_path, data: bytes):
    path = tmp_path / "events.jsonl"
    path.write_bytes(data)
    return path


def off_policy(path, capsys, *extra):
    code = cli.main(["off-policy", "--events", str(path), "--artifacts",
                     str(path.parent / "no-model"), *extra])
    return code, capsys.readouterr()


BAD_LINES = {
    "not JSON": (b'{"id": "x", "u": "1", "i": "2", "t": "cli', "not JSON"),
    "array": (b"[1, 2, 3]", "not a JSON object"),
    "no user": (json.dumps({"id": "x", "i": "2", "t": "click", "ts": 1.76e9}).encode(),
                "no 'u' field"),
    "context a list": (json.dumps({**impression("r9", 0, "a"), "c": [1]}).encode(),
                       "'c' is not a JSON object"),
    "position text": (json.dumps(impression("r9", "one", "a")).encode(),
                      "impression position 'one' is not an integer"),
    "position negative": (json.dumps(impression("r9", -1, "a")).encode(),
                          "impression position -1 is not an integer"),
    "position huge": (json.dumps(impression("r9", 10 ** 30, "a")).encode(),
                      "impression position 1000000000000000000000000000000 is not"),
    "propensity 0": (json.dumps(impression("r9", 0, "a", propensity=0)).encode(),
                     "impression propensity 0 is not a probability in (0, 1]"),
    "propensity NaN": (json.dumps(impression("r9", 0, "a", propensity=float("nan"))).encode(),
                       "impression propensity nan is not a probability"),
    "propensity above 1": (json.dumps(impression("r9", 0, "a", propensity=2.0)).encode(),
                           "impression propensity 2.0 is not a probability"),
    "moved without propensity": (
        json.dumps({**impression("r9", 0, "a"), "c": {"position": 0, "base_position": 2}}
                   ).encode(), "moved by exploration (base_position 2, position 0) without"),
    "features text": (json.dumps(impression("r9", 0, "a", features="abc")).encode(),
                      "impression features are not a list of numbers and nulls"),
    "not UTF-8": (b'{"id": "x\xff", "u": "1", "i": "2", "t": "click", "ts": 1.8e9}',
                  "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_off_policy_names_a_damaged_line_and_exits_2(tmp_path, capsys, case):
    bad, problem = BAD_LINES[case]
    lines = [line.encode() for line in good_lines()]
    lines.insert(2, bad)  # the third line, in the middle of the file
    path = write(tmp_path, b"\n".join(lines) + b"\n")
    code, out = off_policy(path, capsys)
    assert code == 2, out
    assert f"rankly off-policy: {path} line 3: " in out.err and problem in out.err
    assert "Traceback" not in out.err and out.out == ""


def test_train_ranker_names_a_damaged_line_and_exits_2(tmp_path, capsys):
    pytest.importorskip("lightgbm")
    lines = [line.encode() for line in good_lines()]
    lines.insert(1, b"\x00\xff")
    path = write(tmp_path, b"\n".join(lines) + b"\n")
    code = cli.main(["train-ranker", "--events", str(path), "--artifacts", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"rankly train-ranker: {path} line 2: not UTF-8" in err


def test_a_torn_last_line_is_skipped_as_the_event_log_does(tmp_path):
    """A log read while it is written may end in half a line: the file log cuts it off on its
    next start, and it was never acknowledged."""
    lines = good_lines()
    path = write(tmp_path, ("\n".join(lines) + "\n" + lines[0][:40]).encode())
    feedback = load_feedback(path)
    assert [s.request_id for s in feedback.slates] == ["r1", "r2"]
    with pytest.raises(LogError, match="line 8: not JSON"):  # with its newline: damaged
        load_feedback(write(tmp_path, ("\n".join(lines) + "\n" + lines[0][:40] + "\n"
                                       ).encode()))


@pytest.mark.parametrize("data", [b"", b"\n\n", json.dumps(click("r1", "a")).encode() + b"\n"])
def test_off_policy_on_a_log_without_slates_exits_2(tmp_path, capsys, data):
    path = write(tmp_path, data)
    code, out = off_policy(path, capsys)
    assert code == 2 and f"rankly off-policy: {path}: no slates" in out.err


def test_a_log_concatenated_twice_counts_each_impression_and_click_once(tmp_path):
    lines = good_lines()
    once = load_feedback(write(tmp_path, ("\n".join(lines) + "\n").encode()))
    twice = load_feedback(write(tmp_path, ("\n".join(lines + lines) + "\n").encode()))
    assert [s.items for s in twice.slates] == [s.items for s in once.slates]
    assert [s.clicks.tolist() for s in twice.slates] == [s.clicks.tolist() for s in once.slates]
    assert twice.skipped == {} and twice.unattributed == 0


def test_a_log_concatenated_twice_counts_an_unmatched_outcome_once(tmp_path):
    # the report's unattributed_outcomes and the users' histories read each event once
    lines = good_lines() + [json.dumps(click(None, "zz", ts=1.76e9 + 7))]
    once = load_feedback(write(tmp_path, ("\n".join(lines) + "\n").encode()))
    twice = load_feedback(write(tmp_path, ("\n".join(lines + lines) + "\n").encode()))
    assert once.unattributed == twice.unattributed == 1
    assert twice.history == once.history


def test_a_reused_request_id_leaves_its_slates_out_and_says_so(tmp_path, capsys):
    """Clients may send their own request_id: two slates under one id cannot be told apart,
    so neither is estimated (before, the second overwrote the first's positions and took
    the first user's clicks and features)."""
    docs = (slate("r1", ["a", "b", "c"]) + [click("r1", "b")]
            + slate("r1", ["d", "e", "f"], user="u2", ts=1.76e9 + 30) + [click("r1", "e", "u2")]
            + slate("r2", ["c", "a", "b"], ts=1.76e9 + 60) + [click("r2", "a", ts=1.76e9 + 65)]
            + slate("r3", ["a", "b"], ts=1.76e9 + 90)
            + slate("r3", ["b", "a"], ts=1.76e9 + 95))  # same user, other order
    path = write(tmp_path, "\n".join(map(json.dumps, docs)).encode() + b"\n")
    feedback = load_feedback(path)
    assert [s.request_id for s in feedback.slates] == ["r2"]
    assert feedback.skipped == {"conflicting": 2} and feedback.unattributed == 2
    report = evaluate(feedback, {})
    assert report["skipped_slates"] == {"conflicting": 2}
    assert report["clicks"] == 1 and report["impressions"] == 3
    assert "left out: 2 requests whose impressions conflict" in render(report)


def test_a_slate_with_a_missing_position_is_left_out(tmp_path):
    docs = slate("r1", ["a", "b", "c"]) + [impression("r2", k, a) for k, a in
                                            ((0, "a"), (1, "b"), (3, "d"))]
    feedback = load_feedback(write(tmp_path, "\n".join(map(json.dumps, docs)).encode()))
    assert [s.request_id for s in feedback.slates] == ["r1"]
    assert feedback.skipped == {"positions_missing": 1}



def test_train_ranker_says_which_slates_it_left_out(tmp_path, capsys):
    pytest.importorskip("lightgbm")
    docs = slate("r1", ["a", "b"]) + slate("r1", ["c", "d"], user="u2")
    path = write(tmp_path, "\n".join(map(json.dumps, docs)).encode() + b"\n")
    code = cli.main(["train-ranker", "--events", str(path), "--artifacts", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "0 logged slates; need at least 10; left out: 1 requests whose " \
        "impressions conflict" in err


def test_a_log_without_clicks_has_null_lifts_in_json_and_n_a_in_text(tmp_path, capsys):
    docs = [json.loads(line) for line in good_lines() if '"click"' not in line]
    path = write(tmp_path, "\n".join(map(json.dumps, docs)).encode() + b"\n")
    report = evaluate(load_feedback(path), {"same": np.array([["a", "b", "c"],
                                                              ["c", "a", "b"]], dtype=object)})
    lift = report["policies"]["same"]["ctr"]["lift_vs_logging"]["ips"]
    assert np.isnan(lift["estimate"])  # 0 clicks over 0 clicks: no lift exists
    text = json.dumps(json_ready(report), allow_nan=False)  # strict JSON: no NaN token
    assert json.loads(text)["policies"]["same"]["ctr"]["lift_vs_logging"]["ips"] == {
        "estimate": None, "ci95": [None, None], "se": None}
    assert "nan" not in render(report).lower() and "n/a [n/a, n/a]" in render(report)
    assert "warning: no clicks in the log" in render(report)


def test_a_ranking_the_log_does_not_support_is_flagged_in_the_text(tmp_path):
    # the log never showed "x" or "y": IPS counts those positions as unclicked and its
    # interval, however narrow, is not the ranking's rate
    path = write(tmp_path, ("\n".join(good_lines()) + "\n").encode())
    report = evaluate(load_feedback(path), {
        "same": np.array([["a", "b", "c"], ["c", "a", "b"]], dtype=object),
        "other": np.array([["x", "b", "y"], ["c", "x", "y"]], dtype=object)})
    text = render(report)
    assert "warning: other is supported on 33.3% of its positions" in text
    assert "warning: same" not in text


def strict_json(text: str):
    def refuse(token):
        raise ValueError(f"{token} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
def test_off_policy_json_of_a_log_without_clicks_is_strict_json(artifacts, tmp_path, capsys):
    docs = slate("r1", ["1", "2", "3"], user="1") + slate("r2", ["4", "5", "6"], user="2",
                                                           ts=1.76e9 + 60)
    path = write(tmp_path, "\n".join(map(json.dumps, docs)).encode() + b"\n")
    code = cli.main(["off-policy", "--events", str(path), "--artifacts", str(artifacts),
                     "--json"])
    report = strict_json(capsys.readouterr().out)
    assert code == 0 and report["clicks"] == 0
    assert report["policies"]["evaluated"]["ctr"]["lift_vs_base"]["ips"]["estimate"] is None


def clicked_log(tmp_path, clicked: range, slates: int = 20):
    """``slates`` slates of three items for users 1-5, clicks in the slates ``clicked``."""
    docs = []
    for r in range(slates):
        items = [str(1 + (r + j) % 40) for j in range(3)]
        docs += slate(f"r{r}", items, user=str(1 + r % 5), ts=1.76e9 + 60 * r)
        if r in clicked:
            docs.append(click(f"r{r}", items[1], user=str(1 + r % 5), ts=1.76e9 + 60 * r + 5))
    return write(tmp_path, "\n".join(map(json.dumps, docs)).encode() + b"\n")


@pytest.mark.slow
@pytest.mark.parametrize("clicked,problem", [
    (range(0), "no click in the 16 training slates: nothing to learn from"),
    (range(16), "no click in the 4 validation slates (the latest 20% of 20): too little "
                "traffic to validate a ranker"),
])
def test_train_ranker_refuses_a_log_it_cannot_learn_or_validate_and_writes_nothing(
        artifacts, tmp_path, capsys, clicked, problem):
    """Before, it trained a ranker on no clicks, or one whose validation NDCG was None and
    off-policy lift NaN, and wrote it over the model's version all the same."""
    import shutil

    pytest.importorskip("lightgbm")
    art = shutil.copytree(artifacts, tmp_path / "art")
    manifest = (art / "manifest.json").read_text()
    path = clicked_log(tmp_path, clicked)
    code = cli.main(["train-ranker", "--events", str(path), "--artifacts", str(art)])
    assert code == 2 and f"rankly train-ranker: {path}: {problem}" in capsys.readouterr().err
    assert (art / "manifest.json").read_text() == manifest and not (art / "parts" / "ltr").exists()


@pytest.mark.parametrize("command", ["off-policy", "train-ranker"])
def test_a_directory_without_a_model_is_named_without_a_traceback(tmp_path, capsys, command):
    if command == "train-ranker":
        pytest.importorskip("lightgbm")
    path = clicked_log(tmp_path, range(20))
    code = cli.main([command, "--events", str(path), "--artifacts", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and f"rankly {command}: {tmp_path / 'none'} has no manifest.json" in err
