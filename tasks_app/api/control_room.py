"""GET /api/v1/tasks/control-room: the snapshot the control room page polls (tasks_app/control_room.py)."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from finops.api_permissions import HasModelPermission

from ..control_room import control_room_snapshot
from .serializers import ErrorSerializer


class _Beat(serializers.Serializer):
    ok = serializers.BooleanField()
    age_s = serializers.FloatField(allow_null=True)
    leader = serializers.CharField(required=False)
    max_age_s = serializers.IntegerField(required=False)


class _WorkerTask(serializers.Serializer):
    task = serializers.CharField()
    id = serializers.CharField()


class _Worker(serializers.Serializer):
    name = serializers.CharField()
    queues = serializers.ListField(child=serializers.CharField())
    concurrency = serializers.IntegerField(allow_null=True)
    seen_s_ago = serializers.FloatField()
    active = _WorkerTask(many=True)
    reserved = serializers.IntegerField()


class _Queue(serializers.Serializer):
    name = serializers.CharField()
    length = serializers.IntegerField()


class _System(serializers.Serializer):
    broker_ok = serializers.BooleanField()
    error = serializers.CharField(required=False)
    workers_ok = serializers.BooleanField(required=False)
    beat = _Beat(required=False)
    workers = _Worker(many=True, required=False, help_text="Platform admins only.")
    queues = _Queue(many=True, required=False, help_text="Platform admins only.")


class _Schedule(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    task = serializers.CharField()
    enabled = serializers.BooleanField()
    schedule = serializers.CharField()
    last_run_at = serializers.DateTimeField(allow_null=True)
    next_run_at = serializers.DateTimeField(allow_null=True)
    last_state = serializers.CharField(allow_null=True)
    last_run_url = serializers.CharField(allow_null=True)
    url = serializers.CharField()


class _Run(serializers.Serializer):
    id = serializers.UUIDField()
    task = serializers.CharField()
    account = serializers.CharField(allow_null=True)
    state = serializers.CharField()
    triggered_by = serializers.CharField()
    enqueued_at = serializers.DateTimeField()
    duration_ms = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    cancellable = serializers.BooleanField()
    url = serializers.CharField()


class _Stat(serializers.Serializer):
    task = serializers.CharField()
    finished = serializers.IntegerField()
    success_rate = serializers.FloatField(allow_null=True, help_text="Per cent of finished runs that succeeded.")
    p50_ms = serializers.IntegerField(allow_null=True)
    p95_ms = serializers.IntegerField(allow_null=True)


class _DeadLetter(serializers.Serializer):
    id = serializers.IntegerField()
    task = serializers.CharField()
    account = serializers.CharField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    url = serializers.CharField()


class ControlRoomSerializer(serializers.Serializer):
    generated_at = serializers.DateTimeField()
    platform_admin = serializers.BooleanField()
    can_trigger = serializers.BooleanField(help_text="Whether the user may run, cancel and replay (buttons shown).")
    system = _System()
    schedules = _Schedule(many=True, help_text="Platform admins only (empty for others).")
    recent_runs = _Run(many=True)
    stats = serializers.DictField(
        child=_Stat(many=True), help_text='Per window ("24h", "7d"): success rate and duration p50/p95 per task.'
    )
    dead_letters = _DeadLetter(many=True)
    dead_letters_waiting = serializers.IntegerField()


class ControlRoomView(APIView):
    permission_classes = [IsAuthenticated, HasModelPermission.of("tasks_app.view_taskrun")]

    @extend_schema(
        tags=["monitor"],
        summary="Control room snapshot",
        description="What the admin's control room shows, in one answer: workers (queues, concurrency, active "
        "tasks), queue lengths and beat's heartbeat (details for platform admins, ok flags for others), the "
        "schedules with last and next run (platform admins), recent runs, success rate and duration p50/p95 per "
        "task over 24 h and 7 d, and dead letters waiting for a replay — all within the user's scope.",
        responses={200: ControlRoomSerializer, 401: ErrorSerializer, 403: ErrorSerializer},
    )
    def get(self, request):
        return Response(ControlRoomSerializer(control_room_snapshot(user=request.user)).data)
