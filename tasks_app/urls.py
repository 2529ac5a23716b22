"""The task API under /api/v1/: the seed's exact paths, the audit trail, dead letters, export and JWT."""

from django.urls import path

from .api import views
from .api.auth import ThrottledTokenObtainPairView, ThrottledTokenRefreshView
from .api.control_room import ControlRoomView

CREATE = {"post": "create"}

urlpatterns = [
    # The seed's triggers.
    path("tasks/sync/cost-data", views.CostDataSyncViewSet.as_view(CREATE), name="tasks-sync-cost-data"),
    path("tasks/sync/resources", views.ResourceDiscoveryViewSet.as_view(CREATE), name="tasks-sync-resources"),
    path("tasks/monitor/budgets", views.BudgetMonitorViewSet.as_view(CREATE), name="tasks-monitor-budgets"),
    path("tasks/analyze/optimization", views.OptimizationViewSet.as_view(CREATE), name="tasks-analyze-optimization"),
    path("tasks/analyze/anomalies", views.AnomalyViewSet.as_view(CREATE), name="tasks-analyze-anomalies"),
    path("tasks/maintenance/cleanup", views.CleanupViewSet.as_view(CREATE), name="tasks-maintenance-cleanup"),
    # The seed's monitoring.
    path("tasks/status/<str:task_id>", views.TaskMonitorViewSet.as_view({"get": "status"}), name="tasks-status"),
    path("tasks/active", views.TaskMonitorViewSet.as_view({"get": "active"}), name="tasks-active"),
    path("tasks/workers/stats", views.TaskMonitorViewSet.as_view({"get": "workers"}), name="tasks-workers-stats"),
    path("tasks/cancel/<str:task_id>", views.TaskMonitorViewSet.as_view({"delete": "cancel"}), name="tasks-cancel"),
    path("tasks/health", views.HealthView.as_view(), name="tasks-health"),
    path("tasks/control-room", ControlRoomView.as_view(), name="tasks-control-room"),
    # The audit trail and dead letters.
    path("tasks/runs", views.TaskRunViewSet.as_view({"get": "list"}), name="taskrun-list"),
    path("tasks/runs/<uuid:pk>", views.TaskRunViewSet.as_view({"get": "retrieve"}), name="taskrun-detail"),
    path("tasks/dead-letters", views.DeadLetterViewSet.as_view({"get": "list"}), name="deadletter-list"),
    path("tasks/dead-letters/<int:pk>", views.DeadLetterViewSet.as_view({"get": "retrieve"}), name="deadletter-detail"),
    path(
        "tasks/dead-letters/<int:pk>/replay",
        views.DeadLetterViewSet.as_view({"post": "replay"}),
        name="deadletter-replay",
    ),
    # FOCUS out.
    path("costs/export", views.FocusExportView.as_view(), name="costs-export"),
    # JWT.
    path("auth/token", ThrottledTokenObtainPairView.as_view(), name="token-obtain"),
    path("auth/token/refresh", ThrottledTokenRefreshView.as_view(), name="token-refresh"),
]
