"""The cost dashboards in headless Chromium against a running server with 90 days of data: every chart is drawn.

An operator signs in, opens the overview, spend, budgets, anomalies and savings pages, and each chart is checked as
drawn: its Chart.js instance holds datasets with nonzero data, and its canvas has painted pixels. The operator
dismisses a recommendation from the savings page. A viewer sees the same dashboards without action buttons, and a
forged POST (with a valid CSRF token) is refused with 403. The browser cannot reach any host but 127.0.0.1
(--host-resolver-rules), every request it made is read from its performance log and must be to the test server, and
no Content-Security-Policy violation may occur. Screenshots go to $FINOPS_SCREENSHOTS_DIR (default build/screenshots).
"""

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from costs_app.models import RecommendationStatus
from providers_app.models import Role
from providers_app.services.teams import team_default, team_member_set
from tests.costs_app.dashboard_data import world_build
from tests.factories import UserFactory
from tests.security.test_browser_csp import CHROMEDRIVER, CHROMIUM, RECORD_VIOLATIONS, SELENIUM, violations

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed (Debian: apt-get install -y chromium)"),
    pytest.mark.skipif(not CHROMEDRIVER, reason="chromedriver is not installed (apt-get install -y chromium-driver)"),
    pytest.mark.skipif(not SELENIUM, reason="selenium is not installed (requirements/dev.txt)"),
    pytest.mark.timeout(300),
]
PASSWORD = "pass-word-123"  # UserFactory's
ROOT = Path(__file__).resolve().parents[2]

# The chart behind a canvas, as the browser drew it: its datasets' nonzero values and the canvas' painted pixels.
CHART_STATE = """
const canvas = arguments[0];
const chart = Chart.getChart(canvas);
if (!chart) { return null; }
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let painted = 0;
for (let i = 3; i < data.length; i += 4) { if (data[i] !== 0) { painted += 1; } }
return {
  id: canvas.id,
  type: chart.config.type,
  datasets: chart.data.datasets.map(d => ({label: d.label,
    nonzero: d.data.filter(v => v !== null && Number(v) !== 0).length})),
  labels: chart.data.labels.length,
  painted: painted,
  pixels: canvas.width * canvas.height,
};
"""


@pytest.fixture
def shots() -> Path:
    folder = Path(os.environ.get("FINOPS_SCREENSHOTS_DIR") or ROOT / "build" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--disable-gpu", "--no-sandbox", "--window-size=1440,1800", "--disable-dev-shm-usage",
        # Offline: no name resolves but 127.0.0.1, so nothing can be fetched from a CDN or elsewhere.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--disable-background-networking", "--disable-component-update", "--no-first-run",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_VIOLATIONS})
    yield driver
    driver.quit()


def requested(driver) -> set[str]:
    """Every URL the browser asked for since the last call (its performance log of DevTools network events)."""
    urls = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return urls


def sign_in(driver, base: str, username: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(f"{base}/admin/login/?next=/admin/dashboards/")
    driver.find_element(By.ID, "id_username").send_keys(username)
    driver.find_element(By.ID, "id_password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait(driver, lambda d: d.find_elements(By.ID, "dashboard-nav"))


def wait(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def drawn(driver, url: str, containers: str, expected: int, shot: Path) -> list[dict]:
    """Open `url`, wait until `expected` chart containers (CSS) say data-drawn, screenshot, and return each chart's
    state; a page that reports a loading error fails at once with its message."""
    from selenium.webdriver.common.by import By

    driver.get(url)

    def ready(d):
        errors = d.find_elements(By.CSS_SELECTOR, ".dash-error")
        if errors:
            raise AssertionError(f"{url}: {errors[0].text}")
        return len(d.find_elements(By.CSS_SELECTOR, f"{containers}[data-drawn=true]")) >= expected

    wait(driver, ready)
    driver.save_screenshot(str(shot))
    canvases = driver.find_elements(By.CSS_SELECTOR, ", ".join(f"{c} canvas" for c in containers.split(", ")))
    return [driver.execute_script(CHART_STATE, canvas) for canvas in canvases]


def assert_charts_drawn(states: list[dict], page: str) -> None:
    assert states, page
    for state in states:
        assert state is not None, f"{page}: a canvas without a chart"
        assert state["painted"] > state["pixels"] * 0.01, f"{page}: the canvas is blank ({state})"
        assert any(d["nonzero"] for d in state["datasets"]), f"{page}: every dataset is empty ({state})"


def test_the_dashboards_draw_their_charts_and_act_with_the_users_rights(live_server, browser, shots, tmp_path):
    from selenium.webdriver.common.by import By

    # given: 90 days of data, an operator and a viewer of the accounts' team, both staff (the admin)
    world = world_build(tmp_path)
    for name, role in (("operator", Role.OPERATOR), ("viewer", Role.VIEWER)):
        team_member_set(team=team_default(), user=UserFactory(username=name, is_staff=True), role=role)
    base = live_server.url.replace("localhost", "127.0.0.1")  # the one host the browser may resolve
    seen: dict[str, list[str]] = {}

    # when the operator opens each dashboard
    sign_in(browser, base, "operator")
    browser.save_screenshot(str(shots / "dashboards-01-index.png"))
    seen["index"] = violations(browser)

    spend = drawn(
        browser, f"{base}/admin/dashboards/spend/", "#spend-box, #mtd-box", 2, shots / "dashboards-02-spend.png"
    )
    assert_charts_drawn(spend, "spend")
    stacked = next(state for state in spend if state["id"] == "spend-chart")
    assert stacked["type"] == "bar" and stacked["labels"] == 30  # the default period: 30 days
    assert len(stacked["datasets"]) >= 4  # the services of the two accounts
    top_services = browser.find_elements(By.CSS_SELECTOR, "#top-services tr")
    assert len(top_services) >= 4 and top_services[-1].text.startswith("Total")
    assert "$" in browser.find_element(By.CSS_SELECTOR, "[data-field=total]").text
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#top-tags[data-loaded=true]"))
    assert "team = " in browser.find_element(By.ID, "top-tags").text
    seen["spend"] = violations(browser)
    by_account = drawn(
        browser,
        f"{base}/admin/dashboards/spend/?group_by=account&date_from={world.first_day}&date_to={world.last_day}",
        "#spend-box",
        1,
        shots / "dashboards-03-spend-by-account-90-days.png",
    )
    assert_charts_drawn(by_account, "spend by account")
    assert [d["label"] for d in by_account[0]["datasets"]] == ["prod-aws", "data-aws"]
    assert by_account[0]["labels"] == 90
    seen["spend by account"] = violations(browser)

    budgets = drawn(
        browser, f"{base}/admin/dashboards/budgets/", "[data-budget]", 2, shots / "dashboards-04-budgets.png"
    )
    assert_charts_drawn(budgets, "budgets")
    for burn in budgets:
        labels = {d["label"] for d in burn["datasets"] if d["nonzero"]}
        assert {"Actual (cumulative)", "Forecast"} <= labels, burn
        assert any(label.startswith("Threshold 80% actual") for label in labels), burn
    assert len(browser.find_elements(By.CSS_SELECTOR, "#budget-rows tr")) == 2
    seen["budgets"] = violations(browser)

    anomalies = drawn(
        browser, f"{base}/admin/dashboards/anomalies/", ".anomaly-card .dash-chart", len(world.anomalies),
        shots / "dashboards-05-anomalies.png",
    )  # fmt: skip
    assert_charts_drawn(anomalies, "anomalies")
    for series in anomalies:
        marked = next(d for d in series["datasets"] if d["label"] == "Anomalous days")
        assert marked["nonzero"] >= 1, series
    assert browser.find_elements(By.CSS_SELECTOR, ".dash-causes tbody tr td.dash-money")  # root causes listed
    seen["anomalies"] = violations(browser)

    savings = drawn(browser, f"{base}/admin/dashboards/savings/", ".dash-chart", 2, shots / "dashboards-06-savings.png")
    assert_charts_drawn(savings, "savings")
    assert "$1,334.75 per month" in browser.find_element(By.CSS_SELECTOR, "[data-field=totals]").text
    seen["savings"] = violations(browser)

    # and dismisses the largest recommendation from the list
    target = world.recommendations[0]
    row = browser.find_element(By.ID, f"recommendation-{target.pk}")
    row.find_element(By.CSS_SELECTOR, "form.dash-dismiss input[name=text]").send_keys("Kept on purpose: the web tier")
    row.find_element(By.CSS_SELECTOR, "form.dash-dismiss input[type=submit]").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".messagelist .success"))
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".dash-chart[data-drawn=true]")) == 2)
    browser.save_screenshot(str(shots / "dashboards-07-savings-dismissed.png"))
    assert not browser.find_elements(By.ID, f"recommendation-{target.pk}")
    target.refresh_from_db()
    assert target.status == RecommendationStatus.DISMISSED and target.status_reason == "Kept on purpose: the web tier"
    seen["savings after dismiss"] = violations(browser)

    # then a viewer sees the dashboards drawn but no action, and a forged POST is refused
    sign_in(browser, base, "viewer")
    viewer_savings = drawn(
        browser, f"{base}/admin/dashboards/savings/", ".dash-chart", 2, shots / "dashboards-08-savings-viewer.png"
    )
    assert_charts_drawn(viewer_savings, "savings (viewer)")
    assert browser.find_elements(By.CSS_SELECTOR, "#recommendations tbody tr")
    assert not browser.find_elements(By.CSS_SELECTOR, "#recommendations form, #recommendations input[type=submit]")
    victim = world.recommendations[1]
    status = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const body = new FormData();
        body.append('csrfmiddlewaretoken', document.querySelector('input[name=csrfmiddlewaretoken]').value);
        body.append('text', 'forged');
        fetch(arguments[0], {method: 'POST', body: body, credentials: 'same-origin'}).then(r => done(r.status));
        """,
        f"{base}/admin/dashboards/savings/{victim.pk}/dismiss/",
    )
    assert status == 403
    victim.refresh_from_db()
    assert victim.status == RecommendationStatus.OPEN
    viewer_spend = drawn(
        browser, f"{base}/admin/dashboards/spend/", "#spend-box", 1, shots / "dashboards-09-spend-viewer.png"
    )
    assert_charts_drawn(viewer_spend, "spend (viewer)")
    seen["viewer"] = violations(browser)

    assert {page: found for page, found in seen.items() if found} == {}
    urls = requested(browser)
    # the log is complete: Chart.js and the JSON were fetched from this server
    assert f"{base}/static/finops/vendor/chartjs/chart.umd.min.js" in urls
    assert any(url.startswith(f"{base}/api/v1/dashboards/spend/") for url in urls)
    outside = {url for url in urls if urlsplit(url).hostname not in ("127.0.0.1", None)}
    assert outside == set(), f"requests left 127.0.0.1: {sorted(outside)}"
