"""Event-log encoding of one served 10-item slate: stdlib json vs orjson vs the slate encoder.

    pytest benchmarks/test_encoding.py

The README's "orjson" row and the NOTE in engine/events/log.py cite these ratios.
"""

from __future__ import annotations

import json

import pytest

from rankly.engine.events.log import ImpressionSlate, _encode, _encode_impressions

SLATE = ImpressionSlate(1_764_000_000.0, "9f1c2b7e4d3a4f0e8a6b5c4d3e2f1a0b", "user-123",
                        tuple(str(1000 + i) for i in range(10)),
                        {"variant": "control", "experiment": "home", "probability": 0.5,
                         "model_version": "20261127T085536-9443a4b3", "cached": True})
EVENTS = SLATE.events()


def stdlib_lines() -> list[bytes]:
    """The log lines as the stdlib would write them (the encoder before orjson)."""
    out = []
    for e in EVENTS:
        doc = e.to_json()
        doc["at"], doc["nd"] = 1_764_000_000.0, 1
        out.append((json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
    return out


def test_encoders_write_the_same_lines():
    assert [_encode(e, 1_764_000_000.0, False) for e in EVENTS] == stdlib_lines()
    assert _encode_impressions(SLATE, 1_764_000_000.0) == stdlib_lines()


@pytest.mark.benchmark(group="encode a 10-item slate")
@pytest.mark.parametrize("encoder", ["stdlib json", "orjson per event", "orjson per slate"])
def test_encode_slate(benchmark, encoder):
    fn = {
        "stdlib json": stdlib_lines,
        "orjson per event": lambda: [_encode(e, 1_764_000_000.0, False) for e in EVENTS],
        "orjson per slate": lambda: _encode_impressions(SLATE, 1_764_000_000.0),
    }[encoder]
    benchmark(fn)
