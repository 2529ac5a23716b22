"""Correlation ids: one per request or task chain, carried in task headers and every log line."""

import contextvars
import re
import uuid

HEADER = "HTTP_X_CORRELATION_ID"
# Task message header. Not "correlation_id": Celery already uses that name for the task id.
TASK_HEADER = "x_correlation_id"
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)


def new_id() -> str:
    return uuid.uuid4().hex


def get() -> str | None:
    return correlation_id.get()


def clean(value: str | None) -> str | None:
    """Accept a client-supplied id only if it is short and safe to log."""
    if value and _VALID.match(value):
        return value
    return None


class CorrelationIdMiddleware:
    """Takes X-Correlation-ID from the request (or makes one) and echoes it on the response."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        value = clean(request.META.get(HEADER)) or new_id()
        token = correlation_id.set(value)
        request.correlation_id = value
        try:
            response = self.get_response(request)
        finally:
            correlation_id.reset(token)
        response["X-Correlation-ID"] = value
        return response
