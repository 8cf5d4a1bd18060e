"""The embedded file log as an operator meets it: a damaged file does not stop a server."""

from __future__ import annotations

import asyncio
import errno
import os

import orjson
import pytest

from rankly.engine.events.log import FileEventLog
from rankly.engine.events.values import Event
from rankly.engine.storage.store import StoreUnavailable

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


class FailingDisk:
    """``os`` for the log module, whose next write stores half its bytes and then fails with
    EIO, as does the truncation that would cut them back."""

    def __init__(self) -> None:
        self.armed = True

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        if not self.armed:
            return os.write(fd, data)
        os.write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.EIO, "Input/output error")

    def ftruncate(self, fd, size):
        if self.armed:
            self.armed = False
            raise OSError(errno.EIO, "Input/output error")
        return os.ftruncate(fd, size)


def test_a_write_after_a_torn_one_that_could_not_be_cut_back_is_readable(tmp_path,
                                                                         monkeypatch):
    from rankly.engine.events import log as log_module

    async def go():
        log = FileEventLog(tmp_path, clock=Clock(T0))
        await log.open()
        await log.append([Event("a", "u", "1", "view", T0)])
        monkeypatch.setattr(log_module, "os", FailingDisk())
        with pytest.raises(StoreUnavailable):
            await log.append([Event("b", "u", "2", "view", T0)])
        acked = await log.append([Event("c", "u", "3", "view", T0)])
        await log.close()
        return acked, [e.event_id async for e in log.replay()]

    acked, replayed = asyncio.run(go())
    assert acked.accepted == 1
    assert replayed == ["a", "c"]  # "b" was never acknowledged; "c" was, so it must be there
