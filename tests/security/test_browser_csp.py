"""The admin, the browsable API and the API docs work in a real browser under the Content-Security-Policy.

Headless chromium (the Debian package, driven by selenium through chromedriver) signs in to the admin, opens
pages with their scripts and the Swagger UI, runs one API call from it, and records every CSP violation two ways:
the page's `securitypolicyviolation` events (a listener installed through the DevTools protocol, which the CSP does
not govern) and the browser console. None may occur. Screenshots go to $FINOPS_SCREENSHOT_DIR (default: the
test's tmp dir). Skipped, saying why, when chromium, chromedriver or selenium is not installed.
"""

import os
import shutil
from pathlib import Path

import pytest

from tasks_app.models import RunState, TaskRun
from tests.factories import CloudAccountFactory

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401

    SELENIUM = True
except ImportError:
    SELENIUM = False

pytestmark = [
    # Transactional (the live server reads what the test writes), so pytest-django orders it after the tests that
    # rely on the rows data migrations create: the flush at its end empties every table.
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed (Debian: apt-get install -y chromium)"),
    pytest.mark.skipif(not CHROMEDRIVER, reason="chromedriver is not installed (apt-get install -y chromium-driver)"),
    pytest.mark.skipif(not SELENIUM, reason="selenium is not installed (requirements/dev.txt)"),
]  # fmt: skip

RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || 'inline'} at ${e.sourceFile}`);
});
"""
PASSWORD = "browser-pass-word-1"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--disable-gpu", "--no-sandbox", "--window-size=1440,900", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_VIOLATIONS})
    yield driver
    driver.quit()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("FINOPS_SCREENSHOT_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def violations(driver) -> list[str]:
    """CSP violations of the current page: its events, and console lines naming the Content Security Policy."""
    events = driver.execute_script("return window.__cspViolations || []")
    console = [entry["message"] for entry in driver.get_log("browser") if "Content Security Policy" in entry["message"]]
    return events + console


def visit(driver, url: str, shot: Path, wait_for_css: str, timeout: float = 30) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, wait_for_css))
    )
    driver.save_screenshot(str(shot))


def test_admin_and_api_docs_work_under_the_csp(live_server, browser, shots, django_user_model):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    django_user_model.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    account = CloudAccountFactory(name="browser-aws")
    run = TaskRun.objects.create(
        task_name="sync_provider_cost_data", celery_task_id="browser-run", state=RunState.FAILURE, kwargs={"a": 1}
    )
    base = live_server.url
    seen = {}

    # the admin login page, then signing in through its form
    visit(browser, f"{base}/admin/login/?next=/admin/", shots / "01-admin-login.png", "#id_username")
    seen["login"] = violations(browser)
    browser.find_element(By.ID, "id_username").send_keys("admin")
    browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 30).until(expected_conditions.presence_of_element_located((By.ID, "content-main")))
    browser.save_screenshot(str(shots / "02-admin-index.png"))
    seen["index"] = violations(browser)
    # pages whose JavaScript matters: a change form with an inline and a changelist with actions
    visit(
        browser,
        f"{base}/admin/providers_app/cloudaccount/{account.pk}/change/",
        shots / "03-admin-change.png",
        "#content-main form",
    )
    seen["change form"] = violations(browser)
    visit(browser, f"{base}/admin/providers_app/cloudaccount/", shots / "04-admin-changelist.png", "#result_list")
    browser.find_element(By.ID, "action-toggle").click()  # actions.js: select all
    assert browser.find_element(By.CSS_SELECTOR, "#result_list tbody input.action-select").is_selected()
    seen["changelist"] = violations(browser)
    # a task run: the state badge and the JSON blocks (classes of finops/admin.css, no inline style)
    visit(browser, f"{base}/admin/tasks_app/taskrun/{run.pk}/change/", shots / "04b-admin-taskrun.png", ".finops-state")
    badge = browser.find_element(By.CSS_SELECTOR, ".finops-state")
    assert badge.value_of_css_property("background-color") == "rgba(220, 53, 69, 1)"  # FAILURE red, from the file
    seen["task run"] = violations(browser)

    # the browsable API: a list, and a detail page with its "Extra Actions" menu (test-connection)
    visit(browser, f"{base}/api/v1/accounts/", shots / "04c-browsable-api-list.png", ".response-info")
    seen["browsable api list"] = violations(browser)
    visit(
        browser, f"{base}/api/v1/accounts/{account.pk}/", shots / "04d-browsable-api-detail.png", "#extra-actions-menu"
    )
    menu = browser.find_element(By.ID, "extra-actions-menu").find_element(By.XPATH, "..")
    assert menu.value_of_css_property("float") == "right"  # the rule moved from the style attribute to a file
    seen["browsable api detail"] = violations(browser)

    # the API docs: Swagger UI renders the schema (fetched with the session) and lists the operations
    visit(browser, f"{base}/api/docs/", shots / "05-api-docs.png", ".swagger-ui .opblock", timeout=60)
    assert "FinOps task system API" in browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    seen["api docs"] = violations(browser)
    # and one call from it: GET /api/v1/accounts/ with "Try it out" / "Execute"
    block = browser.find_element(By.CSS_SELECTOR, "[id$='-api_v1_accounts_list']")
    block.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    WebDriverWait(browser, 30).until(lambda d: block.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
    block.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    block.find_element(By.CSS_SELECTOR, ".execute").click()
    WebDriverWait(browser, 30).until(
        lambda d: block.find_elements(By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status")
    )
    status_cell = block.find_element(By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status")
    status = status_cell.text
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", status_cell)
    browser.save_screenshot(str(shots / "06-api-docs-try-it-out.png"))
    seen["api docs call"] = violations(browser)

    assert status.strip().startswith("200"), status
    assert {page: found for page, found in seen.items() if found} == {}

    # the detection itself works: an inline script added to the page is blocked and recorded
    browser.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.x = 1'; document.body.append(s)"
    )
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return (window.__cspViolations || []).length"))
    assert any("script-src" in v for v in violations(browser))
    assert sorted(p.name for p in shots.glob("0*.png")) == [
        "01-admin-login.png", "02-admin-index.png", "03-admin-change.png", "04-admin-changelist.png",
        "04b-admin-taskrun.png", "04c-browsable-api-list.png", "04d-browsable-api-detail.png", "05-api-docs.png",
        "06-api-docs-try-it-out.png",
    ]  # fmt: skip
