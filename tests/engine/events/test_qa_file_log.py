"""The embedded file log as an operator meets it: a damaged file does not stop a server."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from rankly.engine.events.log import FileEventLog
from rankly.engine.events.values import Event

T0 = 1_790_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("damaged", [b"1790000000", b"null", b'["id", "at"]', b'{"at": 1e12}',
                                     b'{"id": "z", "at": "soon"}', b'{"id": "z", "at": null}',
                                     b'{"id": ["z"], "at": 1790000000}'])
def test_a_damaged_line_that_is_still_json_is_skipped_on_open(tmp_path, damaged):
    stored = Event("a", "u", "1", "view", T0)
    line = orjson.loads(orjson.dumps(stored.to_json()))
    path = tmp_path / "events.jsonl"
    path.write_bytes(orjson.dumps({**line, "at": T0}) + b"\n" + damaged + b"\n")

    async def go():
        log = FileEventLog(tmp_path, clock=Clock(T0 + 1))
        await log.open()
        again = await log.append([stored, Event("b", "u", "2", "view", T0 + 1)])
        await log.close()
        return log.torn_lines, again, [e.event_id async for e in log.replay()]

    torn, again, replayed = asyncio.run(go())
    assert torn == 1
    assert (again.accepted, again.duplicates) == (1, 1)  # "a" is still known after the line
    assert replayed == ["a", "b"]
