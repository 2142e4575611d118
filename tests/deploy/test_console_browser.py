"""The operator's side of a real loopback deployment while a run trains: Prometheus metrics and probes over the
operator's listener (never the sites' port), and the console in a real headless Chromium (selenium), which stops
the run through its confirmation page and saves the README's screenshot (docs/console.png)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedhaven.client.ledger import Ledger
from fedhaven.shared.accounting import epsilon
from fedhaven.sim.loopback import LoopbackFederation, run_toml

pytestmark = pytest.mark.slow
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"


def _rounds(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


@pytest.fixture(scope="module")
def training(federation):
    """A run that is still training while this module looks at it (stopped by the browser test, or at the end)."""
    spent = max(epsilon(history=Ledger.in_dir(d / "state").history(), delta=1e-5) for d in federation.site_dirs_list)
    proc = federation.submit(run_toml(rounds=8, target=spent + 2.0, training='[train]\nrecipe = "auto"'))
    deadline = time.monotonic() + 240
    run_dir = None
    while time.monotonic() < deadline and proc.poll() is None:
        if run_dir is None and "submitted; results in" in federation.log("operator"):
            run_dir = LoopbackFederation.run_dir_of(federation.log("operator"))
        if run_dir is not None and any(r["status"] == "ok" for r in _rounds(run_dir)):
            break
        time.sleep(0.5)
    assert run_dir is not None and proc.poll() is None, federation.log("operator")[-3000:]
    assert any(r["status"] == "ok" for r in _rounds(run_dir)), federation.log("operator")[-3000:]
    yield run_dir
    if proc.poll() is None:
        federation.cli("fl-server", "stop", "--run", run_dir.name.removeprefix("run-"), "--state-dir",
                       str(federation.state))
        proc.wait(timeout=120)



def _operator(federation) -> tuple[str, str]:
    info = json.loads((federation.state / "operator.json").read_text())
    return info["url"], Path(info["token_file"]).read_text().strip()


def test_metrics_and_probes_answer_on_the_operators_side_only(federation, training):
    url, token = _operator(federation)
    assert url == f"http://127.0.0.1:{federation.operator_port}"
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 401  # another local account holds no token
        text = client.get("/metrics", headers={"authorization": f"Bearer {token}"}).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("fedhaven_control_api_up", ())] == 1
    assert samples[("fedhaven_sites", (("status", "registered"),))] >= 3
    assert samples[("fedhaven_sites_online", ())] == len(federation.sites)
    assert samples[("fedhaven_rounds_total", (("outcome", "ok"),))] >= 1
    assert samples[("fedhaven_round_duration_seconds_count", ())] >= 1
    assert samples[("fedhaven_runs", (("status", "running"),))] >= 1
    for site in federation.sites:
        assert samples[("fedhaven_site_online", (("site", site),))] == 1
        assert 0 < samples[("fedhaven_site_epsilon", (("site", site),))] < float("inf")
    # the operator's socket answers without a token (its 0700 folder is the boundary); the sites' port never does
    sock = federation.state / "run" / "operator.sock"
    assert sock.parent.stat().st_mode & 0o077 == 0
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://localhost") as local:
        assert "fedhaven_sites_online" in local.get("/metrics").text
    ca = federation.state / "pki" / "ca.pem"
    with httpx.Client(base_url=f"https://localhost:{federation.front}", verify=str(ca), timeout=30) as fleet:
        for path in ("/metrics", "/healthz", "/", "/login"):
            assert fleet.get(path).status_code == 403, path


def _chromium(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing: .ci/run installs them with apt-get")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    # as root and offline: no sandbox, no GPU, nothing fetched in the background, a fresh profile
    opts.add_argument(f"--user-data-dir={tmp_path}")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,880"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def test_the_console_in_a_browser_shows_the_training_run_and_stops_it(federation, training, tmp_path):
    from selenium.webdriver.common.by import By

    url, token = _operator(federation)
    driver = None
    try:
        driver = _chromium(tmp_path / "profile")
        driver.set_page_load_timeout(60)
        driver.get(url + "/")
        assert driver.current_url.endswith("/login")  # no token, no console
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.ID, "login").click()
        _wait_for(driver, "site-summary")
        driver.get(url + "/?refresh=0")  # read it without its reloading every few seconds
        summary = driver.find_element(By.ID, "site-summary").text
        assert f"{len(federation.sites)} online" in summary, summary
        row = driver.find_element(By.CSS_SELECTOR, f'tr[data-run="{training.name}"]')
        assert "running" in row.find_element(By.CLASS_NAME, "run-status").text
        for site in federation.sites:
            cells = driver.find_element(By.CSS_SELECTOR, f'#sites tr[data-site="{site}"]').text
            assert "online" in cells and "offline" not in cells and " now " in f" {cells} "
        _assert_charts_drawn(driver)
        driver.get(url + "/")  # the README's picture: the overview as an operator sees it while the run trains
        _wait_for(driver, "chart-epsilon")
        _assert_charts_drawn(driver)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, height + 140)  # the whole page (the window's frame takes some height)
        SCREENSHOT.parent.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(SCREENSHOT))
        driver.get(f"{url}/runs/{training.name}?refresh=0")
        assert "running" in driver.find_element(By.ID, "run-status").text
        assert int(driver.find_element(By.ID, "rounds-done").text) >= 1
        for site in federation.sites:
            spent = driver.find_element(By.CSS_SELECTOR, f'#budgets tr[data-site="{site}"]').text.split()[1]
            assert float(spent) > 0
            # nothing shared by default: each site's data-quality report stays at the site
            quality = driver.find_element(By.CSS_SELECTOR, f'#site-quality tr[data-site="{site}"]').text
            assert "stays at the site" in quality, quality
        _assert_charts_drawn(driver)
        # stop: a link to a confirmation page, whose POST (with the page's CSRF token) acts
        driver.find_element(By.LINK_TEXT, "Stop this run…").click()
        _wait_for(driver, "confirm")
        assert "stop" in driver.find_element(By.TAG_NAME, "h2").text.lower()
        driver.find_element(By.ID, "confirm").click()
        _wait_for(driver, "message")
        assert "stopped" in driver.find_element(By.ID, "message").text
        deadline = time.monotonic() + 120
        while "finished" not in _run_status(driver, url, training.name):
            assert time.monotonic() < deadline, "the stopped run did not finish"
            time.sleep(1)
        assert "stopped" in _run_status(driver, url, training.name)
        # its checkpoints stay: the console now offers to resume it (through its own confirmation page)
        assert driver.find_element(By.LINK_TEXT, "Resume this run…")
    finally:
        if driver is not None:
            driver.quit()


def _assert_charts_drawn(driver) -> None:
    for chart in ("accuracy", "epsilon"):  # drawn by the coordinator, loaded by the browser
        assert driver.execute_script(f"return document.getElementById('chart-{chart}').naturalWidth") > 0, chart


def _wait_for(driver, element_id: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(expected_conditions.presence_of_element_located((By.ID, element_id)))


def _run_status(driver, url: str, name: str) -> str:
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/runs/{name}?refresh=0")
    return str(driver.find_element(By.ID, "run-status").text)

