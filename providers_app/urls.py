"""URLs of the clouds' API (included under /api/v1/ by finops/urls.py)."""

from rest_framework.routers import SimpleRouter

from .api import CloudAccountViewSet

router = SimpleRouter()
router.register("accounts", CloudAccountViewSet, basename="accounts")

urlpatterns = router.urls
