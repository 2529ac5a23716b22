"""The cost dashboards in the admin (/admin/dashboards/): spend, budgets, anomalies and savings pages.

The pages are admin views (signed-in staff, the admin's look); their charts are drawn in the browser by Chart.js
(costs_app/static/finops/vendor/chartjs/, served by this project: nothing is loaded from another host) from the
JSON of /api/v1/dashboards/... (costs_app.dashboards_api), fetched by costs_app/static/finops/dashboards.js. No
inline script: the Content-Security-Policy allows scripts from this origin only.

Acting on a recommendation (dismiss, mark done) is a POST with the CSRF token, allowed to users with
costs_app.change_recommendation and the operator role in the recommendation's account's team; others see no
buttons and a forged POST answers 403.
"""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from providers_app.models import Role
from providers_app.selectors import accounts_for

from . import dashboard_selectors as dashboards
from .dashboards_api import LimitQuery, SpendQuery
from .selectors import recommendations_for
from .services.recommendations import RecommendationStateError, recommendation_transition_one

CHANGE_RECOMMENDATION = "costs_app.change_recommendation"
PAGES = (
    ("spend", "Spend", "Daily spend by service or account, month to date against last month, top spenders."),
    ("budgets", "Budgets", "Each budget's spend so far, its forecast with the 80 % interval and its thresholds."),
    ("anomalies", "Anomalies", "Each anomaly's daily series against the expected band, and its root causes."),
    ("savings", "Savings", "Potential savings by rule and by account; dismiss or mark recommendations done."),
)
ANOMALIES_SHOWN = 12
RECOMMENDATIONS_SHOWN = 50


def _context(request: HttpRequest, page: str, title: str, **extra) -> dict:
    return {
        **admin.site.each_context(request),
        "title": title,
        "page": page,
        "pages": PAGES,
        "accounts": list(accounts_for(request.user).order_by("name").values_list("pk", "name")[:500]),
        **extra,
    }


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "admin/dashboards/index.html", _context(request, "index", "Cost dashboards"))


def spend(request: HttpRequest) -> HttpResponse:
    params = SpendQuery(data=request.GET)
    valid = params.is_valid()
    return render(
        request,
        "admin/dashboards/spend.html",
        _context(
            request,
            "spend",
            "Spend",
            errors=params.errors if not valid else {},
            filters=params.validated_data if valid else {},
            query=request.GET.urlencode(),
        ),
    )


def budgets(request: HttpRequest) -> HttpResponse:
    return render(request, "admin/dashboards/budgets.html", _context(request, "budgets", "Budgets"))


def anomalies(request: HttpRequest) -> HttpResponse:
    params = LimitQuery(data=request.GET)
    account = params.validated_data.get("account") if params.is_valid() else None
    found = dashboards.anomalies_recent(request.user, account=account, limit=ANOMALIES_SHOWN)
    return render(
        request,
        "admin/dashboards/anomalies.html",
        _context(request, "anomalies", "Anomalies", anomalies=list(found), account=account),
    )


def savings(request: HttpRequest) -> HttpResponse:
    params = LimitQuery(data=request.GET)
    account = params.validated_data.get("account") if params.is_valid() else None
    rows = list(dashboards.open_recommendations(request.user, account=account, limit=RECOMMENDATIONS_SHOWN))
    actionable = set()
    if request.user.has_perm(CHANGE_RECOMMENDATION):
        actionable = set(
            accounts_for(request.user, role=Role.OPERATOR)
            .filter(pk__in={r.account_id for r in rows})
            .values_list("pk", flat=True)
        )
    for row in rows:
        row.can_act = row.account_id in actionable
        row.rule_title = dashboards.rule_title(row.rule)
    return render(
        request,
        "admin/dashboards/savings.html",
        _context(
            request,
            "savings",
            "Savings",
            recommendations=rows,
            account=account,
            query=f"account={account}" if account else "",
        ),
    )


@require_POST
def recommendation_act(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    """Dismiss (reason required) or mark done (optional note) one recommendation of the user's operator scope."""
    if action not in ("dismiss", "done") or not request.user.has_perm(CHANGE_RECOMMENDATION):
        raise PermissionDenied
    found = recommendations_for(request.user, role=Role.OPERATOR, permission="change").filter(pk=pk).first()
    if found is None:
        raise PermissionDenied
    text = (request.POST.get("text") or "").strip()[:2000]
    back = HttpResponseRedirect(reverse("dashboards-savings"))
    if action == "dismiss" and not text:
        messages.error(request, f"Give a reason to dismiss “{found.title}”.")
        return back
    try:
        recommendation_transition_one(
            action=action, recommendation_id=found.pk, user=request.user, now=timezone.now(), text=text
        )
    except RecommendationStateError as exc:
        messages.error(request, str(exc))
        return back
    verb = "dismissed" if action == "dismiss" else "marked done"
    messages.success(request, f"“{found.title}” {verb}.")
    return back


def _view(view):
    return admin.site.admin_view(view)


urlpatterns = [
    path("", _view(index), name="dashboards-index"),
    path("spend/", _view(spend), name="dashboards-spend"),
    path("budgets/", _view(budgets), name="dashboards-budgets"),
    path("anomalies/", _view(anomalies), name="dashboards-anomalies"),
    path("savings/", _view(savings), name="dashboards-savings"),
    path("savings/<int:pk>/<str:action>/", _view(recommendation_act), name="dashboards-recommendation-act"),
]
