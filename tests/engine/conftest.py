"""Fixtures for engine tests: a small trained model, a Starlette app over it, a terminal."""

from __future__ import annotations

import fcntl
import os
import struct
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from rankly.engine.config import load_settings
from rankly.engine.model import fingerprint, load_model, save_model
from rankly.engine.offline.demo import synthesize
from rankly.engine.offline.interactions import build_training_data
from rankly.engine.offline.training import train
from rankly.engine.serving.app import create_app

#: What `rankly train` fits by default, plus ALS (tests of factor-model serving use it).
TRAINERS = ("pop", "blend", "ease", "itemknn", "als")


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    """A model trained on a small synthetic shop (users/items numbered from 1)."""
    interactions, items = synthesize(n_users=300, n_items=400, seed=3)
    data = build_training_data(interactions, items)
    parts = train(data, TRAINERS, load_settings(environ={}),
                  {"als": {"factors": 16, "iterations": 5}})
    out = tmp_path_factory.mktemp("artifacts")
    save_model(out, data.catalog, data.users, parts,
               data_fingerprint=fingerprint(data.user_idx, data.item_idx))
    return out


@pytest.fixture(scope="session")
def model(artifacts):
    return load_model(artifacts)


def make_settings(artifacts, **overrides):
    """Settings ignoring the environment; runtime data (event log) goes to a temp dir."""
    overrides.setdefault("data_dir", tempfile.mkdtemp(prefix="rankly-test-"))
    return load_settings(environ={}, artifacts=artifacts, **overrides)


@pytest.fixture
def settings_for():
    """``settings_for(artifacts, **overrides)``: settings ignoring the process environment."""
    return make_settings


@pytest.fixture
def client(artifacts):
    with TestClient(create_app(make_settings(artifacts))) as c:
        yield c


class Terminal:
    """A pseudo-terminal (80 columns) whose output is read as it comes, so a writer never
    blocks on a full terminal buffer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch
        self._master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.stream = open(slave, "w", encoding="utf-8", closefd=True)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: the other end is closed
                return
            if not data:
                return
            self._chunks.append(data)

    def as_stderr(self) -> None:
        """Make it ``sys.stderr`` (from the test body: pytest's capture resets sys.stderr
        between a fixture's set-up and the test)."""
        self._monkeypatch.setattr(sys, "stderr", self.stream)

    _END = "<<terminal-end>>"

    def output(self) -> str:
        """Close the terminal; return all written to it (newlines as it sends them: \\r\\n).

        Linux drops what the master side has not read yet once the slave closes, so an end
        mark is written and read back before closing: a slow reader thread (a loaded CI
        machine) then cannot lose the output.
        """
        if not self.stream.closed:
            self.stream.write(self._END)
            self.stream.flush()
            deadline = time.monotonic() + 10
            while self._END.encode() not in b"".join(self._chunks):
                if time.monotonic() > deadline or not self._reader.is_alive():
                    break
                time.sleep(0.005)
            self.stream.close()
            self._reader.join(10)
        return b"".join(self._chunks).decode("utf-8", "replace").replace(self._END, "")

    def close(self) -> None:
        self.output()
        os.close(self._master)


@pytest.fixture
def tty_stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[Terminal]:
    """A :class:`Terminal`; call its ``as_stderr()`` in the test to draw on it."""
    term = Terminal(monkeypatch)
    try:
        yield term
    finally:
        term.close()
