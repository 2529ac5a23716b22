"""URL map: the admin, the API under /api/v1/, the OpenAPI schema and docs (signed-in users), a liveness probe."""

from django.contrib import admin
from django.http import JsonResponse
from django.templatetags.static import static
from django.urls import include, path
from django.views import defaults
from django.views.generic import RedirectView

from finops.api_docs import SchemaView, SwaggerDocsView
from finops.limits import throttled_login
from tasks_app.admin_control_room import control_room_act, control_room_view
from tasks_app.api.views import LivenessView
from tasks_app.metrics import metrics_view

urlpatterns = [
    # The admin's sign-in form shares the token endpoint's attempt limits (finops/limits.py).
    path("admin/login/", throttled_login(admin.site.login)),
    path("admin/dashboards/", include("costs_app.dashboards")),  # cost dashboards, admin views (before the admin)
    # Admin pages of our own, before the admin's catch-all; admin_view: signed-in staff only, CSRF-checked.
    path("admin/control-room/", admin.site.admin_view(control_room_view), name="admin-control-room"),
    path("admin/control-room/act", admin.site.admin_view(control_room_act), name="admin-control-room-act"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("tasks_app.urls")),
    path("api/v1/", include("providers_app.urls")),
    path("api/v1/", include("costs_app.urls")),
    # Behind login unless API_DOCS_PUBLIC (finops/api_docs.py).
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", SwaggerDocsView.as_view(url_name="schema"), name="api-docs"),
    path("healthz", LivenessView.as_view(), name="healthz"),
    # The admin is the product's user interface: "/" (and the admin's "View site") lead there.
    path("", RedirectView.as_view(url="/admin/", permanent=False), name="home"),
    path("favicon.ico", RedirectView.as_view(url=static("finops/favicon.svg"), permanent=True), name="favicon"),
    path("metrics", metrics_view, name="metrics"),
]


def not_found(request, exception=None):
    """An unknown URL under /api/ answers JSON like every other API error (e.g. /dead-letters/-1); pages stay HTML."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


handler404 = not_found
