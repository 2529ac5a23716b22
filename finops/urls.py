"""URL map: the admin, the API under /api/v1/, the OpenAPI schema and docs, an unauthenticated liveness probe."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from tasks_app.api.views import LivenessView
from tasks_app.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("tasks_app.urls")),
    path("api/v1/", include("providers_app.urls")),
    path("api/v1/", include("costs_app.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("healthz", LivenessView.as_view(), name="healthz"),
    path("metrics", metrics_view, name="metrics"),
]
