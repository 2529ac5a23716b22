"""URLs of the money's API (included under /api/v1/ by finops/urls.py)."""

from rest_framework.routers import SimpleRouter

from .api import AnomalyMonitorViewSet, AnomalyViewSet

router = SimpleRouter()
router.register("anomalies", AnomalyViewSet, basename="anomalies")
router.register("anomaly-monitors", AnomalyMonitorViewSet, basename="anomaly-monitors")

urlpatterns = router.urls
