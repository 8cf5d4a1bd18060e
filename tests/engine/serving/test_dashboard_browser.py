"""/dashboard in a real headless Chromium: charts render real data, no JavaScript error.

Needs Debian's ``chromium`` and ``chromium-driver`` and selenium from PyPI (the ``test`` extra);
skipped with the reason otherwise. The screenshot goes to ``$RANKLY_ARTIFACTS_DIR`` (CI uploads
it) or ``tests-artifacts/`` in the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx
import pytest

from tests.engine.serving.test_multiworker_metrics import free_port, stop, wait_ready

pytestmark = pytest.mark.slow
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed "
                                "(pip install -e '.[test]')")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("Chromium or ChromeDriver not found (Debian: apt-get install chromium "
                "chromium-driver)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[3]
# window.onerror and unhandled rejections, recorded before any page script runs
CATCH_ERRORS = """
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e)));
window.addEventListener('unhandledrejection', e => window.__errors.push(String(e.reason)));
"""


def artifacts_dir() -> Path:
    path = Path(os.environ.get("RANKLY_ARTIFACTS_DIR") or REPO / "tests-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


EXPERIMENT = """
[[experiments]]
key = "home-ranker"
status = "running"
primary_metric = "ctr"

[[experiments.variants]]
name = "control"

[[experiments.variants]]
name = "popular-first"
scorers = ["popular"]
"""


@pytest.fixture
def server(artifacts: Path, tmp_path: Path):
    config = tmp_path / "rankly.toml"
    config.write_text(EXPERIMENT)
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RANKLY_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rankly.engine.cli", "serve", "--artifacts", str(artifacts),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--config", str(config)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        cwd=tmp_path,  # its event log (./.rankly) stays out of the checkout
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url
    finally:
        stop(proc)


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="rankly-chromium-")
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1300",
                 f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CATCH_ERRORS})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def drive_traffic(url: str, rounds: int) -> None:
    """Requests from repeat and new users; some click (1 in 3) or buy (1 in 7) what they saw."""
    with httpx.Client(base_url=url, timeout=10.0) as c:
        for i in range(rounds):
            for user in (str(i % 50 + 1), str(i % 7 + 1), f"new-visitor-{i}"):  # some repeat
                r = c.get("/recommendations", params={"user_id": user, "n": 8})
                assert r.is_success
                item = r.json()["items"][0]["item_id"]
                for kind, every in (("click", 3), ("purchase", 7)):
                    if zlib.crc32(f"{user}:{kind}".encode()) % every == 0:
                        c.post("/events", json={"event_id": f"{user}-{kind}-{i}",
                                                "user_id": user, "item_id": item, "type": kind,
                                                "request_id": r.json()["request_id"]})
            c.get(f"/items/{i % 40 + 1}/similar", params={"n": 5})


def wait_for(driver, script: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for: {script}")


def test_dashboard_renders_live_charts_without_errors(server, browser):
    drive_traffic(server, 40)
    browser.get(server + "/dashboard")
    wait_for(browser, "return window.rankly && window.rankly.polls >= 1")
    drive_traffic(server, 40)  # a second poll sees new traffic: rates and windows move
    wait_for(browser, "return window.rankly.points >= 3 && window.rankly.last.series"
                      ".request_rate.some(v => v > 0)")
    for chart in ("traffic", "errors", "cache", "quality", "ctr", "conversion"):
        assert browser.execute_script(
            f"return document.querySelectorAll('#chart-{chart} canvas').length") == 1, chart
    stages = browser.execute_script(
        "return Array.from(document.querySelectorAll('#latency .chart canvas'))"
        ".map(c => c.closest('.chart').id)")
    assert {"lat-request", "lat-cache", "lat-score", "lat-rerank"} <= set(stages)
    last = browser.execute_script("return window.rankly.last")
    assert last["model_version"] == browser.find_element("id", "model-version").text
    assert max(v for v in last["series"]["quality"]["catalog_coverage"] if v is not None) > 0
    assert any(v is not None for v in last["series"]["latency"]["request"]["p95"])
    # one CI per running experiment's arm, and the recommendations' own without experiment
    arms = {"home-ranker/control", "home-ranker/popular-first", "all recommendations"}
    assert set(last["series"]["ctr"]) == arms
    for kind in ("ctr", "conversion"):
        for arm in arms:  # every series has data, not only a name
            assert any(v is not None for v in last["series"][kind][arm]["rate"]), (kind, arm)
        legend = browser.execute_script(
            f"return Array.from(document.querySelectorAll('#chart-{kind} .u-legend .u-label'))"
            ".map(e => e.textContent)")
        assert arms <= set(legend), (kind, legend)
    assert any(v is not None and v > 0 for v in last["series"]["ctr"]["all recommendations"]
               ["rate"])  # clicks carrying the served request_id
    # canvases really have pixels drawn (not just created)
    inked = browser.execute_script("""
        const c = document.querySelector('#chart-traffic canvas');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
        return n;""")
    assert inked > 500
    browser.save_screenshot(str(artifacts_dir() / "dashboard.png"))
    assert browser.execute_script("return window.__errors") == []
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
    assert browser.execute_script("return window.rankly.errors") == 0


def test_docs_page_lists_every_operation_from_the_schema(server, browser):
    browser.get(server + "/docs")
    wait_for(browser, "return window.rankly_docs && window.rankly_docs.operations > 0")
    spec = httpx.get(server + "/openapi.json").json()
    operations = sum(len(item) for item in spec["paths"].values())
    assert browser.execute_script("return window.rankly_docs.operations") == operations
    assert browser.execute_script("return window.rankly_docs.error") is None
    text = browser.find_element("id", "api").text
    assert "/recommendations" in text and "user_id" in text and "415" in text
    browser.save_screenshot(str(artifacts_dir() / "docs.png"))
    assert browser.execute_script("return window.__errors") == []
