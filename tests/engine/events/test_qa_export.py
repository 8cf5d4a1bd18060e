"""``rankly export-events`` as an operator uses it: what ``rankly train`` reads back from an
export is what the log holds, and a failed export neither leaves nor clobbers a file."""

from __future__ import annotations

import argparse
import asyncio
import io

import pytest

from rankly.engine.events import cli as events_cli
from rankly.engine.events.log import FileEventLog
from rankly.engine.events.values import Event
from rankly.engine.offline.datasets import load_events_csv
from rankly.engine.storage.store import StoreUnavailable

T0 = 1_790_000_000.0


def write_log(settings, events: list[Event]) -> None:
    async def go():
        log = FileEventLog(settings.data_dir / "events")
        await log.open()
        await log.append(events)
        await log.close()

    asyncio.run(go())


@pytest.fixture
def settings(artifacts, settings_for, tmp_path):
    return settings_for(artifacts, data_dir=tmp_path / "data")


def test_exported_ids_and_ratings_read_back_as_stored(settings, tmp_path):
    # ids the API accepts: any text without control characters, so surrounding spaces,
    # no-break and ideographic spaces, line and paragraph separators, commas and quotes
    users = ["alice ", " alice", "alice", "b\u00a0", "\u2028x", 'c,"q"', "\u3000d\u3000"]
    items = ["1", "1 ", " 1", "i\u00a0", "\u2029", 'e,"', "2\u2003"]
    events = [Event(f"e{n}", u, i, "rating", T0 + n, 3.14159265 + n / 10)
              for n, (u, i) in enumerate(zip(users, items, strict=True))]
    write_log(settings, events)
    out = tmp_path / "export.csv"
    with out.open("w", encoding="utf-8", newline="") as fh:
        asyncio.run(events_cli.export(settings, fh))
    got = load_events_csv(out).interactions
    assert list(got.user_ids) == users
    assert list(got.item_ids) == items
    assert [float(w) for w in got.weights] == pytest.approx(
        [e.value for e in events], rel=1e-5)
    assert list(got.timestamps) == [int(e.timestamp) for e in events]


def test_an_export_rating_keeps_every_digit_the_log_holds(settings):
    write_log(settings, [Event("r", "u", "1", "rating", T0, 3.14159265),
                         Event("s", "u", "2", "rating", T0 + 1, 4.0)])
    out = io.StringIO()
    asyncio.run(events_cli.export(settings, out))
    rows = [line.split(",") for line in out.getvalue().splitlines()[1:]]
    assert [float(r[4]) for r in rows] == [3.14159265, 4.0]


def export_args(settings, out) -> argparse.Namespace:
    return argparse.Namespace(config=None, artifacts=str(settings.artifacts), out=str(out),
                              include_impressions=False, format="csv")


def test_an_export_that_fails_midway_leaves_the_previous_file(settings, tmp_path, monkeypatch):
    write_log(settings, [Event(f"e{n}", "u", "1", "view", T0 + n) for n in range(3)])
    out = tmp_path / "events.csv"
    out.write_text("the last good export\n")

    async def broken(self):
        yield Event("e0", "u", "1", "view", T0)
        raise StoreUnavailable("event log: read failed")

    monkeypatch.setattr(FileEventLog, "replay", broken)
    monkeypatch.setattr(events_cli, "load_settings", lambda path: settings)
    assert events_cli.run_export(export_args(settings, out)) == 1
    assert out.read_text() == "the last good export\n"
    assert [p.name for p in tmp_path.iterdir() if p.name != "data"] == ["events.csv"]


def test_export_and_replay_with_redis_down_say_so_in_one_line(settings, spare_redis, capsys,
                                                               monkeypatch, tmp_path):
    down = settings.replace(store_url=spare_redis.url)  # never started: nothing listens
    monkeypatch.setattr(events_cli, "load_settings", lambda path: down)
    out = tmp_path / "events.csv"
    assert events_cli.run_export(export_args(down, out)) == 1
    assert not out.exists()
    replay_args = argparse.Namespace(config=None, artifacts=str(down.artifacts), json=True)
    assert events_cli.run_replay(replay_args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("unavailable" in line for line in err), err
    assert err[0].startswith("rankly export-events: ")
    assert err[1].startswith("rankly replay: ")
