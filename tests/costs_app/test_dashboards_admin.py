"""The dashboards' admin pages: staff only, no inline script, action buttons and actions for operators only."""

import re
from decimal import Decimal

import pytest
from django.test import Client

from costs_app.models import Recommendation, RecommendationStatus
from providers_app.models import Role, Team
from providers_app.services.teams import team_default, team_member_set
from tests.factories import CloudAccountFactory, UserFactory

pytestmark = pytest.mark.django_db
PAGES = ["/admin/dashboards/", "/admin/dashboards/spend/", "/admin/dashboards/budgets/",
         "/admin/dashboards/anomalies/", "/admin/dashboards/savings/"]  # fmt: skip


def staff_client(username: str, role: Role, team: Team | None = None) -> Client:
    user = UserFactory(username=username, is_staff=True)
    team_member_set(team=team or team_default(), user=user, role=role)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def recommendation() -> Recommendation:
    return Recommendation.objects.create(
        account=CloudAccountFactory(name="prod"),
        rule="idle_instances",
        provider_resource_id="i-1",
        title="Stop idle instance i-1",
        currency="USD",
        estimated_monthly_saving=Decimal("120.50"),
    )


def dismiss(client: Client, recommendation: Recommendation, reason: str = "not idle: batch host"):
    return client.post(f"/admin/dashboards/savings/{recommendation.pk}/dismiss/", {"text": reason})


@pytest.mark.parametrize("page", PAGES)
def test_pages_need_a_signed_in_staff_user_and_carry_no_inline_script(client, page):
    assert client.get(page).status_code == 302  # to the admin login
    viewer = staff_client("viewer", Role.VIEWER)
    answer = viewer.get(page)
    assert answer.status_code == 200
    html = answer.content.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "an inline script would be refused by the CSP"
    assert "/static/finops/vendor/chartjs/chart.umd.min.js" in html and "cdn" not in html.lower()


def test_a_viewer_sees_no_button_and_a_forged_post_is_refused(recommendation):
    viewer = staff_client("viewer", Role.VIEWER)
    page = viewer.get("/admin/dashboards/savings/").content.decode()
    assert "Stop idle instance i-1" in page and "read only" in page
    assert "dash-dismiss" not in page and "Mark done" not in page
    assert dismiss(viewer, recommendation).status_code == 403
    assert viewer.post(f"/admin/dashboards/savings/{recommendation.pk}/done/").status_code == 403
    recommendation.refresh_from_db()
    assert recommendation.status == RecommendationStatus.OPEN


def test_an_operator_dismisses_with_a_reason_and_marks_done(recommendation):
    operator = staff_client("operator", Role.OPERATOR)
    assert "dash-dismiss" in operator.get("/admin/dashboards/savings/").content.decode()
    # a dismissal without a reason is refused with a message, nothing changes
    answer = dismiss(operator, recommendation, reason="  ")
    assert answer.status_code == 302
    recommendation.refresh_from_db()
    assert recommendation.status == RecommendationStatus.OPEN
    # with one
    assert dismiss(operator, recommendation).status_code == 302
    recommendation.refresh_from_db()
    assert (recommendation.status, recommendation.status_reason) == (
        RecommendationStatus.DISMISSED,
        "not idle: batch host",
    )
    # a dismissed one cannot be marked done from here: refused with the reason, status kept
    answer = operator.post(f"/admin/dashboards/savings/{recommendation.pk}/done/", follow=True)
    assert "is dismissed" in answer.content.decode()
    recommendation.refresh_from_db()
    assert recommendation.status == RecommendationStatus.DISMISSED


def test_another_teams_operator_and_a_get_are_refused(recommendation):
    stranger = staff_client("stranger", Role.OPERATOR, Team.objects.create(name="Elsewhere"))
    assert "Stop idle instance i-1" not in stranger.get("/admin/dashboards/savings/").content.decode()
    assert dismiss(stranger, recommendation).status_code == 403
    operator = staff_client("operator", Role.OPERATOR)
    assert operator.get(f"/admin/dashboards/savings/{recommendation.pk}/dismiss/").status_code == 405
    assert operator.post(f"/admin/dashboards/savings/{recommendation.pk}/delete/").status_code == 403
    recommendation.refresh_from_db()
    assert recommendation.status == RecommendationStatus.OPEN


def test_a_bad_filter_is_named_on_the_page_and_no_chart_is_asked_for():
    viewer = staff_client("viewer", Role.VIEWER)
    html = viewer.get("/admin/dashboards/spend/", {"date_from": "2020-01-01", "date_to": "2026-01-01"}).content.decode()
    assert "at most 400 days" in html and 'data-dashboard="spend"' not in html
