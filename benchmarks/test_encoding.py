"""Event-log encoding of one served 10-item slate: stdlib json vs orjson vs the slate encoder.

    pytest benchmarks/test_encoding.py

The README's "orjson" row and the NOTE in engine/events/log.py cite these ratios. The
``features`` group times a cached slate's lines with its point-in-time features (#19): each
item's fields merged into its position's dict and encoded for every answer, as before #16,
against the cached record's fields encoded once and spliced in.
"""

from __future__ import annotations

import json

import orjson
import pytest

from rankly.engine.events.log import ImpressionSlate, _encode, _encode_impressions

SLATE = ImpressionSlate(1_764_000_000.0, "9f1c2b7e4d3a4f0e8a6b5c4d3e2f1a0b", "user-123",
                        tuple(str(1000 + i) for i in range(10)),
                        {"variant": "control", "experiment": "home", "probability": 0.5,
                         "model_version": "20261127T085536-9443a4b3", "cached": True})
EVENTS = SLATE.events()
#: A cached slate's record: per item, the fields its impressions log (engine/pipeline/served.py).
FEATURES = {item: {"features": [k, round(4.8 - k / 7, 6), 250.0 - k, 0.0, 0.0, 0.402597, 0.25,
                                k % 2]}
            for k, item in enumerate(SLATE.item_ids)}
PRE_ENCODED = {item: b"," + orjson.dumps(f)[1:-1] for item, f in FEATURES.items()}
SHARED = {**SLATE.context, "propensity": 1.0, "history_length": 77, "scorer": "blend"}


def merged_per_answer() -> list[bytes]:
    """The lines as the impression logger built them before #16: dicts merged per answer."""
    per = tuple({**FEATURES[item]} for item in SLATE.item_ids)
    return _encode_impressions(ImpressionSlate(SLATE.timestamp, SLATE.request_id,
                                               SLATE.user_id, SLATE.item_ids, dict(SHARED),
                                               per), 1_764_000_000.0)


def spliced() -> list[bytes]:
    """The lines from the record's pre-encoded fields."""
    fields = tuple([PRE_ENCODED.get(item, b"") for item in SLATE.item_ids])
    return _encode_impressions(ImpressionSlate(SLATE.timestamp, SLATE.request_id,
                                               SLATE.user_id, SLATE.item_ids, dict(SHARED),
                                               (), fields), 1_764_000_000.0)


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
    assert spliced() == merged_per_answer()


@pytest.mark.benchmark(group="encode a 10-item slate")
@pytest.mark.parametrize("encoder", ["stdlib json", "orjson per event", "orjson per slate"])
def test_encode_slate(benchmark, encoder):
    fn = {
        "stdlib json": stdlib_lines,
        "orjson per event": lambda: [_encode(e, 1_764_000_000.0, False) for e in EVENTS],
        "orjson per slate": lambda: _encode_impressions(SLATE, 1_764_000_000.0),
    }[encoder]
    benchmark(fn)


@pytest.mark.benchmark(group="encode a 10-item slate with its features")
@pytest.mark.parametrize("encoder", ["merged per answer", "pre-encoded, spliced"])
def test_encode_slate_with_features(benchmark, encoder):
    benchmark({"merged per answer": merged_per_answer, "pre-encoded, spliced": spliced}[encoder])
