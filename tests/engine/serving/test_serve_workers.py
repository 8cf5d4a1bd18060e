"""`rankly serve` sizes its workers: one per core with a shared store, 1 with the embedded."""

import os

import pytest

from rankly.engine.cli import serving_workers
from rankly.engine.config import ConfigError, load_settings


def test_default_is_one_worker_per_core_with_redis():
    s = load_settings(environ={"RANKLY_STORE_URL": "redis://127.0.0.1:1/0"})
    assert s.workers == 0
    assert serving_workers(s) == len(os.sched_getaffinity(0))


def test_embedded_store_serves_from_one_process():
    assert serving_workers(load_settings(environ={})) == 1


def test_an_explicit_count_wins():
    s = load_settings(environ={"RANKLY_WORKERS": "3", "RANKLY_STORE_URL": "redis://x:1/0"})
    assert serving_workers(s) == 3


def test_negative_workers_are_refused():
    with pytest.raises(ConfigError, match="workers must be >= 0"):
        load_settings(environ={"RANKLY_WORKERS": "-1"})
