"""URLs of the money's API (included under /api/v1/ by finops/urls.py)."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from . import dashboards_api
from .anomalies_api import AnomalyMonitorViewSet, AnomalyViewSet
from .api import RecommendationViewSet

router = SimpleRouter()
router.register("recommendations", RecommendationViewSet, basename="recommendations")
router.register("anomalies", AnomalyViewSet, basename="anomalies")
router.register("anomaly-monitors", AnomalyMonitorViewSet, basename="anomaly-monitors")

urlpatterns = router.urls

# The dashboards' JSON (costs_app/dashboards_api.py): what the admin's charts draw.
urlpatterns += [
    path("dashboards/spend/", dashboards_api.SpendDashboardView.as_view(), name="dashboards-api-spend"),
    path("dashboards/spend/tags/", dashboards_api.SpendTagsView.as_view(), name="dashboards-api-spend-tags"),
    path("dashboards/budgets/", dashboards_api.BudgetsDashboardView.as_view(), name="dashboards-api-budgets"),
    path("dashboards/budgets/<int:pk>/burn/", dashboards_api.BudgetBurnView.as_view(), name="dashboards-api-burn"),
    path(
        "dashboards/anomalies/<int:pk>/series/",
        dashboards_api.AnomalySeriesView.as_view(),
        name="dashboards-api-anomaly-series",
    ),
    path("dashboards/savings/", dashboards_api.SavingsDashboardView.as_view(), name="dashboards-api-savings"),
]
