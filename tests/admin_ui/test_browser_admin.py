"""The admin as people use it, in headless Chromium against a live server with the demo data, a real worker and
beat: sign in, the control room shows workers and queues and refreshes by itself, run a schedule now and see its
run, cancel a run, replay a dead letter, edit a schedule; a viewer sees no button and a forged POST is refused.
No CSP violation on any page. Screenshots at 1440x900 go to $FINOPS_SCREENSHOTS_DIR (default build/screenshots/).
"""

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from providers_app.models import CloudAccount, Role
from providers_app.services.teams import team_member_set
from tasks_app.models import DeadLetter, RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.celery_procs import ROOT, wait_for
from tests.factories import UserFactory
from tests.security.test_browser_csp import (
    CHROMEDRIVER,
    CHROMIUM,
    SELENIUM,
    browser,  # noqa: F401  (the fixture)
    violations,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER and SELENIUM), reason="chromium, chromedriver or selenium missing"
    ),
]
PASSWORD = "demo-pass-word-1"


@pytest.fixture
def shots() -> Path:
    folder = Path(
        os.environ.get("FINOPS_SCREENSHOTS_DIR")
        or os.environ.get("FINOPS_SCREENSHOT_DIR")
        or ROOT / "build/screenshots"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def by_css(driver, css, timeout=30):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))


def sign_in(driver, base, username):
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/admin/login/?next=/admin/")
    by_css(driver, "#id_username").send_keys(username)
    driver.find_element(By.ID, "id_password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    by_css(driver, "#content-main")


def control_room(driver, base, *, refreshes=1):
    driver.get(f"{base}/admin/control-room/")
    wait_for(
        lambda: int(driver.find_element("id", "control-room").get_attribute("data-refreshes") or 0) >= refreshes,
        timeout=30,
        what="the control room to draw its data",
    )


def refreshed(driver, predicate, what, timeout=40):
    """Wait, without reloading, until the page's own polling shows what `predicate` looks for."""
    wait_for(lambda: predicate(driver.find_element("id", "control-room").text), timeout=timeout, what=what)


def shot(driver, shots, name):
    driver.save_screenshot(str(shots / name))


@pytest.fixture
def demo(db):
    call_command("seed_demo", "--password", PASSWORD, stdout=open(os.devnull, "w"))  # noqa: SIM115
    # The default schedules come from a data migration; an earlier transactional test's flush may have emptied them.
    PeriodicTask.objects.get_or_create(
        name="Budget monitoring",
        defaults={
            "task": "monitor_budget",
            "interval": IntervalSchedule.objects.get_or_create(every=1, period="hours")[0],
        },
    )
    return CloudAccount.objects.get(name="demo-aws")


def test_an_operator_runs_the_task_system_from_the_control_room(
    live_server,
    browser,  # noqa: F811
    shots,
    demo,
    celery_worker_proc,
    celery_beat_proc,  # noqa: F811
):
    from selenium.webdriver.common.by import By

    base = live_server.url
    sign_in(browser, base, "admin")
    violations(browser)  # drains the log
    assert browser.find_element(By.ID, "nav-control-room") and browser.find_element(By.ID, "nav-dashboards")

    # the control room: the worker with its queues and concurrency, the queues, beat alive; it refreshes itself
    control_room(browser, base)
    refreshed(browser, lambda text: "test-" in text and "cost_sync" in text, "the worker row")
    refreshed(browser, lambda text: "alive, heartbeat" in text, "beat's heartbeat")
    first = int(browser.find_element(By.ID, "control-room").get_attribute("data-refreshes"))
    wait_for(
        lambda: int(browser.find_element(By.ID, "control-room").get_attribute("data-refreshes")) > first,
        timeout=20,
        what="a refresh without reload",
    )
    worker_row = browser.find_element(By.CSS_SELECTOR, "#cr-workers tbody tr").text
    assert "monitoring" in worker_row and " 2 " in f" {worker_row} "  # queues and concurrency (-c 2)

    # run a schedule now: its run appears among the recent runs and in the schedule's last state
    schedule = PeriodicTask.objects.get(name="Budget monitoring")
    row = browser.find_element(By.XPATH, "//table[@id='cr-schedules']//tr[td/a[text()='Budget monitoring']]")
    row.find_element(By.CSS_SELECTOR, "button.finops-act-run_now").click()
    by_css(browser, ".messagelist .success")
    assert "Budget monitoring" in browser.find_element(By.CSS_SELECTOR, ".messagelist").text
    run = wait_for(
        lambda: TaskRun.objects.filter(trigger_detail=schedule.name, triggered_by=TriggerKind.ADMIN).first(),
        what="the run-now run",
    )
    refreshed(
        browser,
        lambda text: "monitor_budget" in browser.find_element(By.ID, "cr-runs").text,
        "the run among the recent runs",
    )
    wait_for(lambda: TaskRun.objects.get(id=run.id).state == RunState.SUCCESS, what="the run to succeed")
    refreshed(browser, lambda text: "SUCCESS" in browser.find_element(By.ID, "cr-schedules").text, "last state")
    shot(browser, shots, "01-control-room.png")
    browser.execute_script("document.getElementById('cr-schedules-module').scrollIntoView()")
    shot(browser, shots, "01b-control-room-schedules-runs.png")
    browser.execute_script("document.getElementById('cr-stats-module').scrollIntoView()")
    shot(browser, shots, "01c-control-room-stats.png")

    # cancel a run (one held back 10 minutes): the button, a confirmation, and the ledger says CANCELLED
    later = task_enqueue(task_name="monitor_budget", kwargs={}, triggered_by=TriggerKind.API, countdown=600)
    control_room(browser, base)
    cancel = by_css(browser, f"form input[name=id][value='{later.id}']").find_element(By.XPATH, "..")
    cancel.find_element(By.CSS_SELECTOR, "button").click()
    browser.switch_to.alert.accept()
    by_css(browser, ".messagelist")
    assert TaskRun.objects.get(id=later.id).state == RunState.CANCELLED

    # replay a dead letter: a new run, the letter no longer waits
    failed = TaskRun.objects.create(
        task_name="monitor_budget", celery_task_id="browser-dead", state=RunState.FAILURE, error="boom", account=demo
    )
    letter = DeadLetter.objects.create(run=failed, task_name="monitor_budget", queue="monitoring", error="boom")
    control_room(browser, base)
    row = browser.find_element(By.XPATH, f"//table[@id='cr-dead']//tr[.//input[@value='{letter.id}']]")
    row.find_element(By.CSS_SELECTOR, "button.finops-act-replay").click()
    by_css(browser, ".messagelist .success")
    letter.refresh_from_db()
    assert letter.replay_run is not None
    wait_for(lambda: TaskRun.objects.get(id=letter.replay_run_id).state == RunState.SUCCESS, what="the replay")

    # edit a schedule in the admin: the control room shows the new schedule
    browser.get(f"{base}/admin/django_celery_beat/periodictask/{schedule.pk}/change/")
    enabled = by_css(browser, "#id_enabled")
    assert violations(browser) == []  # beat's form script comes from a file (the CSP refuses inline ones)
    enabled.click()  # disable it
    browser.find_element(By.CSS_SELECTOR, "input[name=_save]").click()
    by_css(browser, ".messagelist .success")
    assert PeriodicTask.objects.get(pk=schedule.pk).enabled is False
    assert "next run" in browser.find_element(By.ID, "result_list").text.lower()
    shot(browser, shots, "02-schedules.png")
    control_room(browser, base)
    row = browser.find_element(By.XPATH, "//table[@id='cr-schedules']//tr[td/a[text()='Budget monitoring']]")
    assert " no " in f" {row.text} "  # enabled: no, and no next run

    # the lists people read, at 1440x900, without horizontal scrolling on the run list
    from costs_app.models import BudgetAlert

    alerted = BudgetAlert.objects.order_by("-spend").first()
    pages = [
        ("03-run-list.png", "/admin/tasks_app/taskrun/", "#result_list"),
        ("04-run-detail.png", f"/admin/tasks_app/taskrun/{run.pk}/change/", ".finops-state"),
        ("05-anomaly-list.png", "/admin/costs_app/anomaly/", "#changelist"),
        ("06-recommendation-list.png", "/admin/costs_app/recommendation/", "#changelist"),
        ("07-budget-list.png", "/admin/costs_app/budget/", "#result_list"),
        ("08-account-form.png", f"/admin/providers_app/cloudaccount/{demo.pk}/change/", "#content-main form"),
        ("09-alert-list.png", "/admin/costs_app/budgetalert/", "#changelist"),
        ("10-dead-letters.png", "/admin/tasks_app/deadletter/", "#changelist"),
        ("11-index.png", "/admin/", "#task-system-module"),
        ("13-daily-rollups.png", "/admin/costs_app/costdailyrollup/", "#changelist"),
        ("14-tag-rollups.png", "/admin/costs_app/costtagrollup/", "#changelist"),
        ("15-budget-alerts-inline.png", f"/admin/costs_app/budget/{alerted.budget_id}/change/", "#alerts-group"),
    ]
    seen, overflowing = {}, {}
    for name, path, css in pages:
        browser.get(base + path)
        by_css(browser, css)
        if css == "#alerts-group":  # the budget's alerts are below its form
            browser.execute_script("document.querySelector('#alerts-group').scrollIntoView()")
        shot(browser, shots, name)
        seen[path] = violations(browser)
        widths = browser.execute_script(
            "const t = document.getElementById('result_list');"
            "return t ? [t.scrollWidth, t.parentElement.clientWidth] : [0, 0]"
        )
        if widths[0] > widths[1] + 2:  # the table is wider than its column: horizontal scrolling
            overflowing[path] = widths
    assert overflowing == {}
    browser.get(f"{base}/admin/tasks_app/taskrun/")
    runs = by_css(browser, "#result_list").text
    assert "(all accounts)" in runs and "demo-aws" in runs  # every run says its account
    assert {path: found for path, found in seen.items() if found} == {}


def test_a_viewer_sees_no_action_buttons_and_a_forged_post_is_refused(live_server, browser, shots, demo):  # noqa: F811
    from selenium.webdriver.common.by import By

    viewer = UserFactory(username="demo-viewer", is_staff=True)
    viewer.set_password(PASSWORD)
    viewer.save()
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_taskrun", "view_deadletter"]))
    team_member_set(team=demo.team, user=viewer, role=Role.VIEWER)
    queued = task_enqueue(
        task_name="monitor_budget", kwargs={"account_id": demo.id}, triggered_by=TriggerKind.API, countdown=600
    )
    failed = TaskRun.objects.create(
        task_name="monitor_budget", celery_task_id="viewer-dead", state=RunState.FAILURE, error="boom", account=demo
    )
    DeadLetter.objects.create(run=failed, task_name="monitor_budget", queue="monitoring", error="boom")
    base = live_server.url
    sign_in(browser, base, "demo-viewer")
    control_room(browser, base)
    refreshed(browser, lambda text: "monitor_budget" in text, "the viewer's runs")
    assert browser.find_elements(By.CSS_SELECTOR, "button.finops-act") == []
    assert not browser.find_element(By.ID, "cr-schedules-module").is_displayed()
    shot(browser, shots, "12-control-room-viewer.png")

    # a forged POST with a valid CSRF token (the viewer's own session) is refused, and nothing changes
    status = browser.execute_script(
        """
        const token = document.querySelector('#control-room-csrf input[name=csrfmiddlewaretoken]').value;
        const body = new URLSearchParams({csrfmiddlewaretoken: token, do: 'cancel', id: arguments[0]});
        const r = await fetch('/admin/control-room/act', {method: 'POST', body: body, credentials: 'same-origin'});
        return r.status;
        """,
        str(queued.id),
    )
    assert status == 403
    assert TaskRun.objects.get(id=queued.id).state == RunState.QUEUED
