"""Test connection: the checks a sync would need, run by a worker, with an answer that names what is wrong."""

import shutil

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from providers_app.connectors import connection_check
from tasks_app.models import RunState, TaskRun
from tests.celery_procs import wait_for
from tests.factories import CloudAccountFactory
from tests.providers_app.focus_files import SAMPLE, sample_rows, write_csv


@pytest.mark.django_db
def test_focus_check_passes_on_the_sample_and_names_a_missing_path_or_column(tmp_path):
    good = CloudAccountFactory(name="good", settings={"path": str(SAMPLE)})
    report = connection_check(good)
    assert report.ok, report.summary()
    assert [c.name for c in report.checks] == ["export files", f"FOCUS columns of {SAMPLE.name}"]

    missing = CloudAccountFactory(name="missing", settings={"path": str(tmp_path / "nowhere")})
    report = connection_check(missing)
    assert not report.ok
    assert report.summary() == f"missing: export files failed: FOCUS path {str(tmp_path / 'nowhere')!r} does not exist"

    header, rows = sample_rows()
    broken = tmp_path / "broken.csv"
    for row in rows:
        del row["BillingCurrency"]
    write_csv(broken, [h for h in header if h != "BillingCurrency"], rows)
    report = connection_check(CloudAccountFactory(name="broken", settings={"path": str(broken)}))
    assert not report.ok
    assert "BillingCurrency: is a mandatory FOCUS column and is missing" in report.summary()


@pytest.mark.django_db
def test_api_needs_the_trigger_permission(viewer_client):
    account = CloudAccountFactory(settings={"path": str(SAMPLE)})
    response = viewer_client.post(f"/api/v1/accounts/{account.id}/test-connection/")
    assert response.status_code == 403
    assert not TaskRun.objects.exists()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_api_and_admin_run_the_check_on_a_worker(celery_worker_proc, operator_client, admin_client, tmp_path):
    export = tmp_path / "focus.csv"
    shutil.copy(SAMPLE, export)
    account = CloudAccountFactory(name="acme", settings={"path": str(export)})

    response = operator_client.post(f"/api/v1/accounts/{account.id}/test-connection/")
    assert response.status_code == 202
    assert response.data["task_name"] == "check_provider_connection"
    run = wait_for(
        lambda: TaskRun.objects.filter(celery_task_id=response.data["task_id"], state=RunState.SUCCESS).first(),
        timeout=60,
        what="the connection check",
    )
    assert run.result["ok"] is True
    status = operator_client.get(response.data["status_url"])
    assert status.data["result"]["summary"].startswith("acme: connection OK")

    export.unlink()
    page = admin_client.post(reverse("admin:providers_app_cloudaccount_test_connection", args=[account.id]))
    assert page.status_code == 302
    texts = [str(m) for m in get_messages(page.wsgi_request)]
    assert texts == [f"acme: export files failed: FOCUS path {str(export)!r} does not exist"]
