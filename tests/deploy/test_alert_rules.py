"""The Prometheus alert rules load in promtool and fire on the series they are about."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rankly.engine import metrics

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found (Debian: apt-get install prometheus; CI installs it)",
)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=RULES, capture_output=True, text=True,
                          timeout=60)


@needs_promtool
def test_promtool_accepts_the_rules():
    done = promtool("check", "rules", "rankly-alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_alerts_fire_in_promtool_unit_tests():
    done = promtool("test", "rules", "rankly-alerts.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def _exported() -> set[str]:
    """Sample names rankly's metric objects can expose."""
    exported = set()
    for obj in vars(metrics).values():
        name = getattr(obj, "_name", None)
        kind = getattr(obj, "_type", "")
        if name:
            exported.add(name + ("_total" if kind == "counter" else ""))
            exported.update({f"{name}_bucket", f"{name}_count", f"{name}_sum"})
    return exported


def test_rules_only_use_metrics_that_rankly_exports():
    text = (RULES / "rankly-alerts.yml").read_text()
    used = set(re.findall(r"\brankly_[a-z_]+", text))
    assert used and used <= _exported(), used - _exported()


def test_every_alert_the_issue_asks_for_is_defined():
    text = (RULES / "rankly-alerts.yml").read_text()
    for alert in ("RanklyLatencyP95OverBudget", "RanklyCacheHitRateLow", "RanklyCTRDrop",
                  "RanklyCoverageLow", "RanklyDiversityLow", "RanklyErrorRateHigh",
                  "RanklyFallbackRateHigh", "RanklyExperimentSRM"):
        assert f"alert: {alert}\n" in text, alert


def test_grafana_dashboard_queries_only_exported_metrics():
    import json

    path = RULES.parent / "grafana" / "rankly-dashboard.json"
    dash = json.loads(path.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = set(re.findall(r"\brankly_[a-z_]+", " ".join(exprs)))
    exported = _exported()
    assert used <= exported, used - exported
    for wanted in ("rankly_stage_duration_seconds_bucket", "rankly_cache_lookups_total",
                   "rankly_clicks_total", "rankly_quality_catalog_coverage",
                   "rankly_quality_intra_list_diversity", "rankly_model_info"):
        assert wanted in used, wanted
