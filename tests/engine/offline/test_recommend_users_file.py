"""`rankly recommend --users FILE`: the file as editors and spreadsheets write it."""

from __future__ import annotations

import json

from rankly.engine import cli


def test_a_byte_order_mark_is_not_part_of_the_first_user_id(artifacts, tmp_path, capsys):
    # Notepad and spreadsheets start a UTF-8 file with a BOM; it made the first user a
    # stranger who got the cold-start answer
    users = tmp_path / "users.txt"
    users.write_bytes(b"\xef\xbb\xbf1\r\n2\r\n")
    assert cli.main(["recommend", "--artifacts", str(artifacts), "--users", str(users),
                     "--n", "3", "--quiet"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["user_id"] for x in lines] == ["1", "2"]
    assert [x["fallback"] for x in lines] == [None, None]


def test_a_users_file_that_is_not_utf8_is_named_with_its_line(artifacts, tmp_path, capsys):
    users = tmp_path / "users.txt"
    users.write_bytes(b"1\n2\n\xff\xfe3\n")
    assert cli.main(["recommend", "--artifacts", str(artifacts), "--users", str(users),
                     "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if " INFO " not in line]
    assert errors == [f"error: --users {users}: line 3 is not UTF-8 text"]


def test_an_interrupted_run_says_its_output_is_partial(artifacts, tmp_path, capsys,
                                                       monkeypatch):
    # Ctrl-C used to end in a KeyboardInterrupt traceback, and a file of lines that looked
    # complete
    from rankly.engine.offline import batch

    def interrupted(model, users, n, settings, *args, **kwargs):
        print(json.dumps({"user_id": users[0]}))
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "recommend", interrupted)
    users = tmp_path / "users.txt"
    users.write_text("1\n2\n")
    assert cli.main(["recommend", "--artifacts", str(artifacts), "--users", str(users),
                     "--quiet"]) == 130
    captured = capsys.readouterr()
    assert captured.out == '{"user_id": "1"}\n'
    errors = [line for line in captured.err.splitlines() if " INFO " not in line]
    assert errors == ["error: interrupted: the output holds only the users written before"]
