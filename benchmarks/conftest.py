"""pytest-benchmark settings shared by the benchmark suites."""

from __future__ import annotations


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Keep the statistics, drop each benchmark's raw timings from the saved JSON.

    The raw rounds made benchmarks/results/kernels.json 30 MB; the README tables only use the
    summary statistics (median, IQR, rounds).
    """
    for bench in output_json.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)
