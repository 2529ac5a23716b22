"""URLs of the money's API (included under /api/v1/ by finops/urls.py)."""

from rest_framework.routers import SimpleRouter

from .api import RecommendationViewSet

router = SimpleRouter()
router.register("recommendations", RecommendationViewSet, basename="recommendations")

urlpatterns = router.urls
