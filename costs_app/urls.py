"""URLs of the money's API (included under /api/v1/ by finops/urls.py)."""

from rest_framework.routers import SimpleRouter

from .anomalies_api import AnomalyMonitorViewSet, AnomalyViewSet
from .api import RecommendationViewSet

router = SimpleRouter()
router.register("recommendations", RecommendationViewSet, basename="recommendations")
router.register("anomalies", AnomalyViewSet, basename="anomalies")
router.register("anomaly-monitors", AnomalyMonitorViewSet, basename="anomaly-monitors")

urlpatterns = router.urls
